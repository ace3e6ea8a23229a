"""The timing loop: warm-up, then a fixed count or a time budget; inputs prepared outside the timed region;
GPU work synchronised before the clock is read."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np


def measure(run: Callable[[], Any], *, warmup: int = 5, runs: int = 30, budget_s: float | None = None,
            sync: Callable[[], None] = lambda: None) -> list[float]:
    """Milliseconds per call. With a budget, runs until it is spent (at least `runs` calls)."""
    for _ in range(warmup):
        run()
    sync()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s if budget_s else None
    while len(samples) < runs or (deadline is not None and time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def summarize(samples: list[float], batch: int) -> dict[str, float]:
    values = np.sort(np.asarray(samples))
    mean = float(values.mean())
    return {
        "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)), "mean_ms": mean,
        "std_ms": float(statistics.pstdev(values.tolist())) if len(values) > 1 else 0.0,
        "throughput_items_s": batch / (mean / 1000.0) if mean > 0 else 0.0, "runs": int(len(values)),
    }
