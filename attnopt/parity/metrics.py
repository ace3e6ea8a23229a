"""Per-output error metrics, and the fp32 tolerance test every artifact must pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass
class OutputMetrics:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def failed_output(name: str, expected: np.ndarray, reason: str) -> OutputMetrics:
    return OutputMetrics(name, tuple(expected.shape), float("inf"), float("inf"), 0.0, False, reason)


def compare(name: str, actual: np.ndarray | None, expected: np.ndarray, tol: Tolerance) -> OutputMetrics:
    """Elementwise |actual - expected| <= atol + rtol * |expected|; nothing passes vacuously."""
    shape = tuple(expected.shape)
    if actual is None:
        return failed_output(name, expected, "output missing")
    if actual.shape != expected.shape:
        return failed_output(name, expected, f"shape {tuple(actual.shape)} != expected {shape}")
    if expected.size == 0:
        return OutputMetrics(name, shape, 0.0, 0.0, 0.0, False, "output is empty")
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    same_nonfinite = np.array_equal(~np.isfinite(a), ~np.isfinite(e)) and np.array_equal(a[~np.isfinite(a)], e[~np.isfinite(e)])
    finite = np.isfinite(a) & np.isfinite(e)
    diff = np.abs(a[finite] - e[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(e[finite]), 1e-12)).max()) if diff.size else 0.0
    cosine = _cosine(a[finite], e[finite])
    within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(e[finite])))
    reason = ""
    if not same_nonfinite:
        reason = "NaN/Inf where the reference has none"
    elif not np.any(e[finite]) and not np.any(a[finite]):
        reason = "both outputs are all zeros"
    elif not within:
        reason = f"max abs {max_abs:.3g} beyond atol {tol.atol:g} + rtol {tol.rtol:g}"
    return OutputMetrics(name, shape, max_abs, max_rel, cosine, not reason, reason)
