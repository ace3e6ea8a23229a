"""Per-output error metrics, and the test of an output against its tolerance criteria."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from attnopt.parity.tolerance import Tolerance


@dataclass
class OutputMetrics:
    """What was measured of one output. A metric that does not apply to what was compared (the cosine of
    greedy token ids, the relative error of a generation step) is None, never a placeholder number."""

    name: str
    shape: tuple[int, ...]
    max_abs: float | None
    max_rel: float | None
    cosine: float | None
    passed: bool
    reason: str = ""
    mean_abs: float | None = 0.0
    top1: float | None = None  # agreement of argmax over the last axis (logits)
    top5: float | None = None  # fraction of the reference's top-1 found in the artifact's top-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def failed_output(name: str, expected: np.ndarray, reason: str) -> OutputMetrics:
    return OutputMetrics(name, tuple(expected.shape), float("inf"), float("inf"), 0.0, False, reason, float("inf"))


def shown(value: float | None, spec: str) -> str:
    """A metric as reports print it: formatted where measured, "-" where it does not apply."""
    return "-" if value is None else format(value, spec)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _agreement(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    want = expected.reshape(-1, expected.shape[-1]).argmax(-1)
    got = actual.reshape(-1, actual.shape[-1])
    top1 = float(np.mean(got.argmax(-1) == want))
    k = min(5, got.shape[-1])
    top5 = float(np.mean((np.argsort(-got, axis=-1)[:, :k] == want[:, None]).any(-1)))
    return top1, top5


def compare(name: str, actual: np.ndarray | None, expected: np.ndarray, tol: Tolerance) -> OutputMetrics:
    """Measure actual against expected and apply the criteria `tol` carries (atol/rtol elementwise,
    cosine, top1; any may be None). Nothing passes vacuously: a missing, empty or all-zero output fails,
    and so does a NaN/Inf where the reference has none."""
    shape = tuple(expected.shape)
    if actual is None:
        return failed_output(name, expected, "output missing")
    if actual.shape != expected.shape:
        return failed_output(name, expected, f"shape {tuple(actual.shape)} != expected {shape}")
    if expected.size == 0:
        return failed_output(name, expected, "output is empty")
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    # NaN/Inf pass only where the reference has the same value in the same place
    same_nonfinite = np.array_equal(~np.isfinite(a), ~np.isfinite(e)) and np.array_equal(
        a[~np.isfinite(a)], e[~np.isfinite(e)], equal_nan=True)
    finite = np.isfinite(a) & np.isfinite(e)
    diff = np.abs(a[finite] - e[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(e[finite]), 1e-12)).max()) if diff.size else 0.0
    cosine = _cosine(a[finite], e[finite])
    top1 = top5 = None
    if "logits" in name.lower() and expected.ndim >= 1 and expected.shape[-1] > 1:
        top1, top5 = _agreement(actual, expected)
    result = OutputMetrics(name, shape, max_abs, max_rel, cosine, True, "", mean_abs, top1, top5)
    result.reason = _verdict(result, diff, e[finite], same_nonfinite, a[finite], tol)
    result.passed = not result.reason
    return result


def compare_in_units(name: str, actual: np.ndarray | None, expected: np.ndarray, tol: Tolerance) -> OutputMetrics:
    """compare() in units of the reference's largest |value| (at least 1), with max_abs given back in the
    output's own units. fp32 rounding grows with the range of what is summed: a 30-layer LLM's logits
    reach +-30 and drift by 1e-4 through a fused kernel's other summation order, a toy's reach +-1; in
    these units the same atol means the same for both (a wrong mask still moves them by whole units)."""
    if actual is None or expected.size == 0 or actual.shape != expected.shape:
        return compare(name, actual, expected, tol)
    scale = max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)))
    metrics = compare(name, actual / scale, expected / scale, tol)
    metrics.max_abs, metrics.mean_abs = metrics.max_abs * scale, metrics.mean_abs * scale
    if scale > 1.0 and metrics.reason:
        metrics.reason = f"in units of its largest |value| {scale:.3g}: {metrics.reason}"
    return metrics


def _verdict(m: OutputMetrics, diff: np.ndarray, expected: np.ndarray, same_nonfinite: bool, actual: np.ndarray,
             tol: Tolerance) -> str:
    if not same_nonfinite:
        return "NaN/Inf where the reference has none (or the other way round)"
    if not np.any(expected) and not np.any(actual):
        return "both outputs are all zeros"
    atol, rtol = tol.atol, tol.rtol
    if atol is not None and not np.all(diff <= atol + (rtol or 0.0) * np.abs(expected)):
        return f"max abs {m.max_abs:.3g} beyond atol {atol:g}" + (f" + rtol {rtol:g}" if rtol else "")
    if tol.cosine is not None and m.cosine < tol.cosine:
        return f"cosine {m.cosine:.6f} below {tol.cosine:g}"
    if tol.top1 is not None and m.top1 is not None and m.top1 < tol.top1:
        return f"top-1 agreement {m.top1:.2%} below {tol.top1:.0%}"
    return ""
