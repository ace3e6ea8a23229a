"""`attnopt optimize`: every fusion recognised from its math and lowered for one target, the result
verified once against the input model (what breaks it rolled back alone), then written with its
sidecar and a coverage report that agrees with the output graph site for site."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnopt.artifacts import check_output
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError, ParityError
from attnopt.exporter import check_output_folder_parent, created_folder
from attnopt.exporter.sidecar import read_sidecar
from attnopt.generation.derived_folder import check_decoder_output, plan_runtime_files, save_artifact
from attnopt.parity.tolerance import Tolerance
from attnopt.passes.feeds import model_inputs, verify_feeds
from attnopt.passes.fusion.sites import FUSION_KINDS, FusionOutcome, confirm_in_graph
from attnopt.passes.graph_utils import default_opset, ensure_node_names
from attnopt.passes.lower import TARGETS, lowering_for
from attnopt.passes.model_files import load_onnx, save_report
from attnopt.passes.rollback import VerifiedRun, run_verified
from attnopt.passes.verify import run_model

@dataclass
class OptimizeResult:
    path: Path
    target: str
    fusions: dict[str, FusionOutcome]
    verification: VerifiedRun
    notes: list[str] = field(default_factory=list)
    #: what the target was lowered against beyond its name (trt: the TensorRT operator table)
    target_details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)  # the JSON form of all of the above
    #: a decoder's runtime files written beside it (tokenizer, generation and genai configs)
    runtime_files: list[str] = field(default_factory=list)

    @property
    def unfused(self) -> int:
        return sum(len(f.unfused) for f in self.fusions.values())

    @property
    def ok(self) -> bool:
        """Verified (or verification off) with nothing rolled back (a site, or a pass such as an opset
        conversion the converters could not do)."""
        plan = self.verification.plan
        return (self.verification.verified is not False and not plan.excluded_sites
                and not any(p.rolled_back for p in self.verification.result.passes))


def _report(result: OptimizeResult, source: Path) -> dict[str, Any]:
    return {
        "format": "attnopt.optimize/2",
        "source": str(source),
        "target": result.target,
        **result.target_details,
        "fusions": {kind: outcome.to_dict() for kind, outcome in result.fusions.items()},
        "verification": result.verification.to_dict(),
        "notes": result.notes,
    }


def optimize(model: str | Path, output: str | Path, *, target: str = "ort", verify: bool = True,
             tolerance: Tolerance = Tolerance(), report: str | Path | None = None, force: bool = False,
             tensorrt_version: str | None = None, onnxruntime_version: str | None = None,
             all_logits: bool = False, progress: Progress = SILENT) -> OptimizeResult:
    """Optimize an ONNX model for `target` (onnx, ort or trt; trt against the operator table of
    `tensorrt_version`, by default the installed TensorRT's, else the newest; ort for the onnxruntime of
    `onnxruntime_version`, by default the installed one, which also verifies it). The result says, per
    fusion kind, the sites found, how many were fused and why each other one was not. A decoder's result is
    a folder onnxruntime-genai loads as it is (tokenizer, generation config, a genai_config.json for the new
    graph); an output in a folder that holds another decoder is refused, and a missing folder is created. A
    decoder's LM head reads each row's last token only (passes.last_logits) unless `all_logits`."""
    start = time.perf_counter()
    source, path = Path(model), Path(output)
    if target not in TARGETS:
        raise AttnoptError(f"unknown target {target!r}", f"choose one of: {', '.join(TARGETS)}")
    if onnxruntime_version is not None and target != "ort":
        raise AttnoptError(f"--onnxruntime-version applies to --target ort, not {target}")
    sidecar = read_sidecar(source)
    cache = ((sidecar or {}).get("decoder") or {}).get("cache") or {}
    lowering = lowering_for(target, tensorrt_version, positions=cache.get("max_positions"),
                            onnxruntime_version=onnxruntime_version)
    check_output_folder_parent(path)
    if path.parent.is_dir():
        check_output(path, force, inputs=(source,))
    check_decoder_output(source, sidecar, path)
    with created_folder(path.parent):
        check_output(path, force, inputs=(source,))
        return _optimize_into(source, path, target, lowering, sidecar, verify, tolerance, report, all_logits,
                              progress, start)


def _optimize_into(source: Path, path: Path, target: str, lowering: Any, sidecar: dict[str, Any] | None, verify: bool,
                   tolerance: Tolerance, report: str | Path | None, all_logits: bool, progress: Progress,
                   start: float) -> OptimizeResult:
    if report is not None:
        check_output(Path(report), force=True, inputs=(source, path))
    with progress.step(f"Loading {source}"):
        first = load_onnx(source)
    reference, feeds = None, []
    if verify:
        specs = model_inputs(first, sidecar)
        feeds = verify_feeds(specs, lowering.batched_chunks)
        with progress.step("Running the input model for reference outputs"):
            reference = run_model(source, feeds)
    copies = iter([first])  # the first run uses the model already loaded; a rollback loads it afresh

    def load():
        model = next(copies, None) or load_onnx(source)
        ensure_node_names(model.graph)  # sites are named by their anchor node: every node needs a name
        return model

    verified = run_verified(load, lowering, reference=reference, feeds=feeds, tolerance=tolerance,
                            all_logits=all_logits, progress=progress)
    del first, copies
    if verified.verified is False:  # nothing rolled back cured it: writing it would hand over a wrong model
        raise ParityError(f"the optimized model stays beyond tolerance of {source} whatever is rolled back "
                          f"({verified.log[-1] if verified.log else 'see the verification'}); nothing written",
                          "report it with the model; --no-verify writes the unverified result")
    run = verified.result
    confirm_in_graph(run.model.graph, run.sites)
    fusions = {kind: FusionOutcome.of(kind, run.sites) for kind in FUSION_KINDS}
    result = OptimizeResult(path, target, fusions, verified, run.notes, lowering.describe())
    runtime = plan_runtime_files(source, sidecar, run.model, path.name)
    result.report = _report(result, source)
    result.runtime_files = result.report["runtime_files"] = save_artifact(
        run.model, path, {**(sidecar or {}), "optimization": result.report, "opset": default_opset(run.model)},
        runtime, progress)
    result.seconds = result.report["seconds"] = round(time.perf_counter() - start, 2)
    if report is not None:
        save_report(Path(report), result.report)
    return result
