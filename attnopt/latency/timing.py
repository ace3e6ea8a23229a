"""The timing loop: warm-up until stable, then rounds. In a round every backend runs its calls once, in an
order shuffled per round, so whatever drifts on the machine (other processes, clock frequency, caches)
lands on all of them alike and every backend gets the same number of rounds. Each call returns only when
its work is done (GPU work included: see Runner.prepare); inputs are prepared before any clock is read."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Call = Callable[[], Any]
#: time each backend spends per round, at least: small models run several calls a round
ROUND_SLICE_S = 0.01
WARMUP_MAX_S = 2.0
STABLE = 0.05


def warm_up(call: Call, minimum: int = 5, max_s: float = WARMUP_MAX_S, clock: Callable[[], float] = time.perf_counter
            ) -> float:
    """At least `minimum` calls, then windows of 3 calls until two in a row agree on their median within 5%
    (or `max_s` has passed). Returns the seconds per call of the last window."""
    for _ in range(minimum):
        call()
    deadline, last = clock() + max_s, None
    while True:
        window = []
        for _ in range(3):
            start = clock()
            call()
            window.append(clock() - start)
        now = statistics.median(window)
        if (last is not None and abs(now - last) <= STABLE * last) or clock() > deadline:
            return now
        last = now


def calls_per_round(seconds_per_call: float, slice_s: float = ROUND_SLICE_S) -> int:
    return int(min(1000, max(1, round(slice_s / max(seconds_per_call, 1e-7)))))


@dataclass
class Rounds:
    """Milliseconds per call, per backend and round; the order each round ran in."""

    calls: dict[str, list[list[float]]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)

    def medians(self, name: str) -> list[float]:
        """One value per round: the median of that round's calls."""
        return [float(np.median(r)) for r in self.calls[name]]

    def flat(self, name: str) -> list[float]:
        return [t for r in self.calls[name] for t in r]


def time_rounds(calls: dict[str, Call], per_round: dict[str, int], *, rounds: int, budget_s: float | None = None,
                rng: np.random.Generator | None = None, clock: Callable[[], float] = time.perf_counter) -> Rounds:
    """`rounds` rounds at least; with a budget, more until `budget_s` seconds have passed."""
    rng = rng or np.random.default_rng(0)
    names = list(calls)
    out = Rounds({n: [] for n in names})
    deadline = clock() + budget_s if budget_s else None
    while len(out.orders) < rounds or (deadline is not None and clock() < deadline):
        order = [names[i] for i in rng.permutation(len(names))]
        out.orders.append(order)
        for name in order:
            call, samples = calls[name], []
            for _ in range(per_round[name]):
                start = clock()
                call()
                samples.append((clock() - start) * 1000.0)
            out.calls[name].append(samples)
    return out
