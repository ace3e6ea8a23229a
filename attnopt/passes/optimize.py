"""`attnopt optimize`: cleanup, then attention, layernorm, GELU and RMSNorm fusion lowered for one
target, each pass verified numerically against the input; writes the model, its sidecar and a report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from attnopt.artifacts import check_output
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError
from attnopt.exporter.sidecar import read_sidecar
from attnopt.parity.metrics import Tolerance
from attnopt.passes.cleanup import cleanup, tidy
from attnopt.passes.fusion.attention import recognise_attention
from attnopt.passes.fusion.gelu import fold_bias, fuse_gelu
from attnopt.passes.fusion.layernorm import fuse_layernorm
from attnopt.passes.fusion.lowering import TARGETS, lower_attention
from attnopt.passes.fusion.rmsnorm import fuse_rmsnorm
from attnopt.passes.fusion.rotary import fuse_rotary
from attnopt.passes.fusion.sites import FusionOutcome
from attnopt.passes.graph_utils import default_opset
from attnopt.passes.pipeline import PipelineResult, run_pipeline
from attnopt.passes.writing import save_model, save_report

FUSION_KINDS = ("attention", "layernorm", "gelu", "rmsnorm", "rotary")
#: the onnx target writes opset-23 ops (Attention, RMSNormalization): models below are upgraded
ONNX_TARGET_OPSET = 23


@dataclass
class OptimizeResult:
    path: Path
    report: dict[str, Any]
    seconds: float

    @property
    def unfused(self) -> int:
        return sum(len(f["unfused"]) for f in self.report["fusions"].values())

    @property
    def ok(self) -> bool:
        return not any(p["rolled_back"] for p in self.report["verification"]["passes"])


def _attention_pass(target: str):
    def run(model: ir.Model) -> FusionOutcome:
        outcome = recognise_attention(model, default_opset(model))
        outcome.forms = lower_attention(model, target)
        return outcome
    return run


def _gelu_pass(target: str):
    def run(model: ir.Model) -> FusionOutcome:
        outcome = fuse_gelu(model, target, default_opset(model))
        if target == "ort":
            tidy(model)
            for form, count in fold_bias(model).items():
                base = "FastGelu" if form.startswith("FastGelu") else "Gelu"
                outcome.forms[base] = outcome.forms.get(base, 0) - count
                outcome.forms[form] = count
            outcome.forms = {k: v for k, v in outcome.forms.items() if v}
        return outcome
    return run


def build_passes(target: str, notes: list[str]) -> list[tuple[str, Any]]:
    def cleanup_pass(model: ir.Model) -> None:
        cleanup(model)

    def upgrade_pass(model: ir.Model) -> None:
        _upgrade_opset(model, target, notes)

    return [
        *([("opset-upgrade", upgrade_pass)] if target == "onnx" else []),
        ("cleanup", cleanup_pass),
        ("rotary", lambda m: fuse_rotary(m, target, default_opset(m))),
        ("attention", _attention_pass(target)),
        ("layernorm", lambda m: fuse_layernorm(m, target, default_opset(m))),
        ("gelu", _gelu_pass(target)),
        ("rmsnorm", lambda m: fuse_rmsnorm(m, target, default_opset(m))),
    ]


def load_model(path: Path) -> ir.Model:
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file", "give the path of an .onnx model")
    try:
        return ir.load(path)
    except Exception as exc:
        raise AttnoptError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from exc


def _upgrade_opset(model: ir.Model, target: str, notes: list[str]) -> None:
    opset = default_opset(model)
    if target == "onnx" and opset < ONNX_TARGET_OPSET:
        import onnxscript.version_converter as version_converter

        version_converter.convert_version(model, ONNX_TARGET_OPSET)
        notes.append(f"upgraded the model from opset {opset} to {ONNX_TARGET_OPSET} for the opset-23 ops")


def build_report(result: PipelineResult, notes: list[str], source: Path) -> dict[str, Any]:
    fusions = {kind: (result.fusions.get(kind) or FusionOutcome(kind)).to_dict() for kind in FUSION_KINDS}
    return {
        "format": "attnopt.optimize/1",
        "source": str(source),
        "target": result.target,
        "fusions": fusions,
        "verification": {"passes": [p.to_dict() for p in result.passes]},
        "notes": notes,
    }


def optimize(model: str | Path, output: str | Path, *, target: str = "ort", verify: bool = True,
             tolerance: Tolerance = Tolerance(), report: str | Path | None = None, force: bool = False,
             progress: Progress = SILENT) -> OptimizeResult:
    """Optimize an ONNX model for `target` (onnx, ort or trt). The result's report says, per fusion
    kind, the sites found, how many were fused and why each other one was not."""
    start = time.perf_counter()
    source, path = Path(model), Path(output)
    if target not in TARGETS:
        raise AttnoptError(f"unknown target {target!r}", f"choose one of: {', '.join(TARGETS)}")
    check_output(path, force, inputs=(source,))
    if report is not None:
        check_output(Path(report), force=True, inputs=(source, path))
    with progress.step(f"Loading {source}"):
        ir_model = load_model(source)
    notes: list[str] = []
    sidecar = read_sidecar(source)
    result = run_pipeline(ir_model, target, build_passes(target, notes), verify=verify, tolerance=tolerance,
                          sidecar=sidecar, progress=progress)
    content = build_report(result, notes, source)
    save_model(result.model, path, {**(sidecar or {}), "optimization": content,
                                     "opset": default_opset(result.model)}, progress)
    content["seconds"] = round(time.perf_counter() - start, 2)
    if report is not None:
        save_report(Path(report), content)
    return OptimizeResult(path, content, content["seconds"])
