"""Interleaved timing and the statistics behind bench's verdicts: the same artifact against itself is no
measurable difference, a runner that sleeps is slower, rounds are shuffled and equal for every backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import attnopt
from attnopt.latency.backends import Backend
from attnopt.latency.bench import comparisons, measure
from attnopt.latency.stats import FASTER, SAME, SLOWER, ratio_ci, verdict
from attnopt.latency.timing import time_rounds
from attnopt.runtime import Runner, runner_for


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("latency")
    attnopt.export("bert-tiny", folder / "bert.onnx", verify=False)
    attnopt.optimize(folder / "bert.onnx", folder / "bert.ort.onnx", target="ort", verify=False)
    return folder / "bert.ort.onnx"


@pytest.fixture(scope="module")
def feeds() -> dict[tuple[int, int], dict[str, np.ndarray]]:
    loaded = attnopt.load_model("bert-tiny")
    return {(1, 16): {k: v.numpy() for k, v in loaded.make_inputs(1, 16, seed=0).items()}}


class Slowed(Runner):
    """A test double: the real runner, plus a sleep in every call."""

    def __init__(self, inner: Runner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def activate(self) -> None:
        self.inner.activate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return self.inner.infer(feed)

    @property
    def input_names(self) -> list[str]:
        return self.inner.input_names

    def deactivate(self) -> None:
        self.inner.deactivate()


class Logged(Runner):
    """A test double that only records that it ran."""

    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def activate(self) -> None:
        pass

    def infer(self, feed: dict[str, Any]) -> dict[str, Any]:
        self.log.append(self.name)
        return {}


def _ort(path: Path) -> Runner:
    return runner_for(path, "cpu", speed=True, threads=1)


def test_the_same_artifact_twice_is_no_measurable_difference(fused: Path, feeds) -> None:
    backends = [Backend("first", lambda: _ort(fused)), Backend("second", lambda: _ort(fused))]
    _, timing, rounds = measure(backends, feeds, warmup=3, runs=40)
    assert timing["mode"] == "interleaved"
    (result,) = comparisons(rounds, [("second", "first")])
    assert result["verdict"] == SAME
    assert result["ci_low"] <= 1.0 <= result["ci_high"]
    assert {"backend", "against", "ratio", "ci_low", "ci_high", "verdict"} <= set(result)


def test_a_runner_that_sleeps_is_slower(fused: Path, feeds) -> None:
    backends = [Backend("real", lambda: _ort(fused)), Backend("slowed", lambda: Slowed(_ort(fused), 0.003))]
    _, _, rounds = measure(backends, feeds, warmup=2, runs=15)
    slowed, real = comparisons(rounds, [("slowed", "real"), ("real", "slowed")])
    assert slowed["verdict"] == SLOWER and slowed["ci_high"] < 1.0 and slowed["ratio"] < 0.5
    assert real["verdict"] == FASTER and real["ci_low"] > 1.0


def test_rounds_are_shuffled_and_equal_for_every_backend() -> None:
    log: list[str] = []
    names = ["a", "b", "c", "d"]
    calls = {n: Logged(n, log).prepare({}) for n in names}
    got = time_rounds(calls, {n: 2 for n in names}, rounds=24, rng=np.random.default_rng(1))
    assert len(got.orders) == 24 and all(sorted(order) == names for order in got.orders)
    assert len({tuple(order) for order in got.orders}) > 6  # shuffled, not one fixed order
    assert {order[0] for order in got.orders} == set(names)  # everyone goes first sometimes
    assert all(len(got.calls[n]) == 24 and all(len(r) == 2 for r in got.calls[n]) for n in names)
    assert log == [n for order in got.orders for n in order for _ in range(2)]  # the doubles ran in that order


def test_a_budget_adds_rounds_for_every_backend_alike() -> None:
    calls = {n: Logged(n, []).prepare({}) for n in "ab"}
    got = time_rounds(calls, {"a": 1, "b": 3}, rounds=2, budget_s=0.05)
    assert len(got.orders) > 2 and len(got.calls["a"]) == len(got.calls["b"]) == len(got.orders)


def test_blocks_when_the_backends_do_not_fit_together(fused: Path, feeds) -> None:
    huge = Backend("huge", lambda: _ort(fused), needs=2**60)  # more than any machine has free
    rows, timing, _ = measure([Backend("small", lambda: _ort(fused)), huge], feeds, warmup=1, runs=3)
    assert timing["mode"] == "blocks" and "GiB of cpu memory" in timing["why_blocks"]
    assert {r["backend"]: r["rounds"] for r in rows} == {"small": 3, "huge": 3}
    _, asked, _ = measure([Backend("small", lambda: _ort(fused))], feeds, warmup=1, runs=3, interleave=False)
    assert asked["mode"] == "blocks" and asked["why_blocks"] == "asked for blocks"


def test_ratio_ci_and_verdict_on_known_samples() -> None:
    rng = np.random.default_rng(0)
    before = list(12.0 + rng.normal(0, 0.2, 40))
    after = list(10.0 + rng.normal(0, 0.2, 40))
    ratio, low, high = ratio_ci(after, before)
    assert ratio == pytest.approx(1.2, rel=0.02) and 1.0 < low < ratio < high
    assert verdict(low, high) == FASTER and verdict(1 / high, 1 / low) == SLOWER
    same, low, high = ratio_ci(after, after)
    assert same == 1.0 and low <= 1.0 <= high and verdict(low, high) == SAME
