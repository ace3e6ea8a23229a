"""How sure a comparison is: the ratio of median latencies with a 95% bootstrap confidence interval over
timing rounds, and a verdict that never calls a difference the interval cannot tell from 1.0."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

CONFIDENCE = 0.95
#: the smallest difference a run should be able to resolve; wider intervals get a noise warning
RESOLVE = 0.05
FASTER, SLOWER, SAME = "faster", "slower", "no measurable difference"


def summarize(samples: list[float], batch: int) -> dict[str, float]:
    """Percentiles, mean and spread of per-call milliseconds."""
    values = np.sort(np.asarray(samples, dtype=float))
    mean = float(values.mean())
    return {
        "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)), "mean_ms": mean,
        "std_ms": float(statistics.pstdev(values.tolist())) if len(values) > 1 else 0.0,
        "throughput_items_s": batch / (mean / 1000.0) if mean > 0 else 0.0, "runs": int(len(values)),
    }


def ratio_ci(backend: list[float], against: list[float], *, paired: bool = True, resamples: int = 4000,
             seed: int = 0) -> tuple[float, float, float]:
    """median(against) / median(backend) (above 1: `backend` is faster) and its percentile-bootstrap
    interval. Paired: both resampled with the same round indices, since rounds timed together share the
    machine's state (interleaved timing); unpaired for blocks timed one after the other."""
    a, b = np.asarray(against, dtype=float), np.asarray(backend, dtype=float)
    ratio = float(np.median(a) / np.median(b))
    if min(len(a), len(b)) < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pick_b = rng.integers(0, len(b), size=(resamples, len(b)))
    pick_a = pick_b if paired and len(a) == len(b) else rng.integers(0, len(a), size=(resamples, len(a)))
    boot = np.median(a[pick_a], axis=1) / np.median(b[pick_b], axis=1)
    tail = (1.0 - CONFIDENCE) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return ratio, float(low), float(high)


def verdict(ci_low: float, ci_high: float) -> str:
    if ci_low > 1.0:
        return FASTER
    if ci_high < 1.0:
        return SLOWER
    return SAME  # the interval contains 1.0 (or there was too little data to have one)


def resolution(ratio: float, ci_low: float, ci_high: float) -> float:
    """The relative half-width of the interval: the smallest difference this run could resolve."""
    if not (ci_low > 0 and ci_high > 0) or ratio <= 0:
        return float("inf")
    return max(ci_high / ratio, ratio / ci_low) - 1.0


def compare(backend: str, against: str, point: dict[str, Any], mine: list[float], theirs: list[float], *,
            paired: bool = True, seed: int = 0) -> dict[str, Any]:
    ratio, low, high = ratio_ci(mine, theirs, paired=paired, seed=seed)
    return {"backend": backend, "against": against, **point, "ratio": ratio, "ci_low": low, "ci_high": high,
            "verdict": verdict(low, high), "resolution": resolution(ratio, low, high)}
