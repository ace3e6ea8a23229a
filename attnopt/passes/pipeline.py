"""Composes the passes for a target. Every pass is verified numerically against the input model;
a pass that moves an output beyond tolerance is rolled back and reported by name."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir as ir

from attnopt.console import SILENT, Progress
from attnopt.parity.metrics import Tolerance
from attnopt.passes.cleanup import infer_shapes, tidy
from attnopt.passes.feeds import VERIFY_SHAPES, make_feeds, model_inputs
from attnopt.passes.fusion.sites import FusionOutcome
from attnopt.passes.verify import check_against, run_model


@dataclass
class PassRecord:
    name: str
    seconds: float
    verified: bool | None  # None: verification off
    rolled_back: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "seconds": round(self.seconds, 3), "verified": self.verified,
                "rolled_back": self.rolled_back, "reason": self.reason}


@dataclass
class PipelineResult:
    model: ir.Model
    target: str
    fusions: dict[str, FusionOutcome] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    lowered_forms: dict[str, int] = field(default_factory=dict)


#: a pass mutates the model and returns the fusion outcome it produced (or None for cleanups)
PassFn = Callable[[ir.Model], "FusionOutcome | None"]


def _snapshot(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()


def _restore(blob: bytes) -> ir.Model:
    import onnx

    return ir.serde.deserialize_model(onnx.load_from_string(blob))


def run_pipeline(model: ir.Model, target: str, passes: list[tuple[str, PassFn]], *, verify: bool = True,
                 tolerance: Tolerance = Tolerance(), sidecar: dict[str, Any] | None = None,
                 progress: Progress = SILENT) -> PipelineResult:
    result = PipelineResult(model, target)
    feeds: list[dict] = []
    reference: list[dict] = []
    if verify:
        specs = model_inputs(model, sidecar)
        feeds = [make_feeds(specs, b, s, seed=i) for i, (b, s) in enumerate(VERIFY_SHAPES)]
        with progress.step("Running the input model for reference outputs"):
            reference = run_model(model, feeds)
    for name, fn in passes:
        start = time.perf_counter()
        backup = _snapshot(result.model) if verify else None
        with progress.step(f"Pass {name}"):
            outcome = fn(result.model)
            tidy(result.model)
            record = PassRecord(name, 0.0, None)
            if verify:
                check = check_against(reference, result.model, feeds, tolerance)
                record.verified = check.passed
                if not check.passed:
                    record.rolled_back, record.reason = True, check.worst()
                    result.model = _restore(backup)  # type: ignore[arg-type]
                    infer_shapes(result.model)
                    progress.warn(f"pass {name} moved outputs beyond tolerance ({record.reason}); rolled back")
                    if outcome is not None and outcome.fused:
                        outcome.reject(f"({outcome.fused} sites of pass {name})", f"rolled back: {record.reason}")
                        outcome.fused = 0
        record.seconds = time.perf_counter() - start
        result.passes.append(record)
        if outcome is not None:
            result.fusions[outcome.kind] = outcome
    return result
