"""Verification around the pass manager: run every pass, verify the result once, and only when it moves
an output beyond tolerance find what broke it and roll back just that: a whole-model pass (cleanup,
opset conversion) when the model breaks without any fusion, else the sites, one at a time, by
bisection over them in graph order. One bad site never costs the model its other fusions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from attnopt.console import SILENT, Progress
from attnopt.parity.tolerance import Tolerance
from attnopt.passes.lower import Lowering
from attnopt.passes.manager import PassesRun, Plan, run_passes
from attnopt.passes.verify import check_against

#: past this many bad sites, the rest of the sites are rolled back together (something is broken wholesale)
MAX_BISECTIONS = 8


@dataclass
class VerifiedRun:
    result: PassesRun
    plan: Plan
    verified: bool | None  # None: verification off
    runs: int = 1
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "runs": self.runs, "seconds": round(self.seconds, 2),
                "passes": [p.to_dict() for p in self.result.passes],
                "rolled_back_sites": dict(sorted(self.plan.excluded_sites.items())), "log": self.log}


class _Trials:
    """Runs the passes from a fresh copy of the input under a plan, and verifies the result."""

    def __init__(self, load: Callable[[], ir.Model], reference: list[dict[str, np.ndarray]],
                 feeds: list[dict[str, np.ndarray]], tolerance: Tolerance, options: dict[str, Any]) -> None:
        self.load, self.reference, self.feeds, self.tolerance, self.options = load, reference, feeds, tolerance, options
        self.runs = 0

    def run(self, plan: Plan) -> tuple[PassesRun, str]:
        """The run and, when it fails verification, the worst output's reason ("" when it passes)."""
        self.runs += 1
        result = run_passes(self.load(), plan=plan, **self.options)
        check = check_against(self.reference, result.model, self.feeds, self.tolerance)
        return result, "" if check.passed else (check.worst() or "outputs beyond tolerance")


def run_verified(load: Callable[[], ir.Model], lowering: Lowering, *,
                 reference: list[dict[str, np.ndarray]] | None, feeds: list[dict[str, np.ndarray]],
                 tolerance: Tolerance, all_logits: bool = False, progress: Progress = SILENT) -> VerifiedRun:
    """`reference` None: verification off, one run. `all_logits`: see run_passes."""
    start = time.perf_counter()
    options = {"lowering": lowering, "progress": progress, "all_logits": all_logits}
    if reference is None:
        return VerifiedRun(run_passes(load(), plan=Plan(), **options), Plan(), None,
                           seconds=time.perf_counter() - start)
    trials = _Trials(load, reference, feeds, tolerance, options)
    plan = Plan()
    with progress.step("Verifying the optimized model against the input"):
        result, failure = trials.run(plan)
    log: list[str] = []
    if failure:
        progress.warn(f"the optimized model moved outputs beyond tolerance ({failure}); finding the cause")
        log.append(f"all passes: {failure}")
        quiet = {**options, "progress": SILENT}
        trials.options = quiet
        result, failure, sites_can_help = _roll_back_whole_model_passes(trials, plan, result, failure, log)
        if failure and sites_can_help:
            result, failure = _roll_back_sites(trials, plan, result, failure, log, progress)
    verified = not failure
    return VerifiedRun(result, plan, verified, trials.runs, time.perf_counter() - start, log)


def _roll_back_whole_model_passes(trials: _Trials, plan: Plan, result: PassesRun, failure: str,
                                  log: list[str]) -> tuple[PassesRun, str, bool]:
    """With every site left out, does the model still break? Then one whole-model pass is to blame: the one
    whose skipping alone cures it is rolled back. The last item says whether fusions can be tried at all
    (False when even the model with every site and any one pass left out breaks)."""
    anchors = {s.anchor: "left out to test the whole-model passes" for s in result.sites}
    _, without_sites = trials.run(Plan(anchors, dict(plan.skipped_passes)))
    if not without_sites:  # the whole-model passes are fine: the sites are to blame
        return result, failure, True
    failure = without_sites
    whole_model = [p.name for p in result.passes if not p.name.startswith(("recognise", "lower"))]
    for name in whole_model:
        _, cured = trials.run(Plan(anchors, {**plan.skipped_passes, name: failure}))
        if not cured:
            plan.skipped_passes[name] = failure
            log.append(f"rolled back pass {name}: {failure}")
            return (*trials.run(plan), True)
    log.append(f"no single whole-model pass explains it: {failure}")
    return result, failure, False


def _roll_back_sites(trials: _Trials, plan: Plan, result: PassesRun, failure: str, log: list[str],
                     progress: Progress) -> tuple[PassesRun, str]:
    for _ in range(MAX_BISECTIONS):
        if not failure:
            return result, failure
        order = [s.anchor for s in result.sites if s.fused]
        bad, reason = _first_bad_site(trials, plan, order, failure)
        if bad is None:
            break
        plan.excluded_sites[bad] = reason
        log.append(f"rolled back site {bad}: {reason}")
        progress.warn(f"site {bad} moved outputs beyond tolerance ({reason}); rolled back")
        result, failure = trials.run(plan)
    if failure:  # give up on fusion for this model rather than write a model that fails its check
        for site in result.sites:
            plan.excluded_sites.setdefault(site.anchor, f"rolled back with every other site: {failure}")
        log.append(f"rolled back every site: {failure}")
        result, failure = trials.run(plan)
    return result, failure


def _first_bad_site(trials: _Trials, plan: Plan, order: list[str], failure: str) -> tuple[str | None, str]:
    """The first site in `order` whose rewrite, with those before it, breaks the model: bisection over
    how many of them are kept (none kept passes, all kept fails with `failure`)."""
    good, bad, reason = 0, len(order), failure
    if not order:
        return None, failure
    while bad - good > 1:
        middle = (good + bad) // 2
        left_out = {anchor: "bisection" for anchor in order[middle:]}
        _, why = trials.run(Plan({**plan.excluded_sites, **left_out}, dict(plan.skipped_passes)))
        if why:
            bad, reason = middle, why
        else:
            good = middle
    return order[bad - 1], reason
