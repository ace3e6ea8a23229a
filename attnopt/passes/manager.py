"""The passes of `attnopt optimize` as onnx-ir passes, run in order by onnx-ir's pass manager: cleanup,
the opset the target writes, one recogniser pass per fusion kind (emitting canonical attnopt ops
the target accepts), then the target's lowering. A plan says what to leave out: verification uses
it to roll back one site, or one whole-model pass, and run the rest again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx_ir as ir

from attnopt.console import SILENT, Progress
from attnopt.errors import first_line
from attnopt.passes.cleanup import cleanup, infer_shapes, tidy
from attnopt.passes.fusion.attention import recognise_attention
from attnopt.passes.fusion.gelu import recognise_gelu
from attnopt.passes.fusion.layernorm import recognise_layernorm
from attnopt.passes.fusion.recognition import SITE_KEY, Recognition
from attnopt.passes.fusion.rmsnorm import recognise_rmsnorm
from attnopt.passes.fusion.rotary import recognise_rotary
from attnopt.passes.fusion.sites import Site
from attnopt.passes.graph_utils import ATTNOPT_DOMAIN, default_opset
from attnopt.passes.last_logits import keep_last_logits
from attnopt.passes.lower import ABSORBED_KEY, Lowering
from attnopt.passes.opset import convert_opset
from attnopt.passes.reshape_chains import undo_reshape_chains
from attnopt.passes.shape_reads import reroute_shape_reads, share_equal_shape_reads
from attnopt.passes.tied_weights import share_transposed_copies

#: recognisers in the order they run: rotary before attention (its output is attention's Q and K)
RECOGNISERS: tuple[tuple[str, Callable[[Recognition], None]], ...] = (
    ("rotary", recognise_rotary), ("attention", recognise_attention), ("layernorm", recognise_layernorm),
    ("gelu", recognise_gelu), ("rmsnorm", recognise_rmsnorm))


@dataclass
class Plan:
    """What a run of the passes leaves out, with the reason: sites by anchor, whole-model passes by name."""

    excluded_sites: dict[str, str] = field(default_factory=dict)
    skipped_passes: dict[str, str] = field(default_factory=dict)


@dataclass
class PassRecord:
    name: str
    seconds: float = 0.0
    rolled_back: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "seconds": round(self.seconds, 3), "rolled_back": self.rolled_back,
                "reason": self.reason}


class _Pass(ir.passes.InPlacePass):
    """An in-place onnx-ir pass that keeps its own record (name, time) for the report."""

    def __init__(self, name: str, progress: Progress) -> None:
        super().__init__()
        self.record = PassRecord(name)
        self.progress = progress

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        start = time.perf_counter()
        with self.progress.step(f"Pass {self.record.name}"):
            modified = self.apply(model)
        self.record.seconds = time.perf_counter() - start
        return ir.passes.PassResult(model, modified)

    def apply(self, model: ir.Model) -> bool:
        raise NotImplementedError


class CleanupPass(_Pass):
    def apply(self, model: ir.Model) -> bool:
        cleanup(model)
        return True


class OpsetPass(_Pass):
    """Converts to the opset whose ops the target writes, and notes it."""

    def __init__(self, version: int, progress: Progress, notes: list[str]) -> None:
        super().__init__("opset", progress)
        self.version, self.notes = version, notes

    def apply(self, model: ir.Model) -> bool:
        try:
            before = convert_opset(model, self.version)
        except Exception as exc:  # noqa: BLE001 - a conversion the converters cannot do leaves the model as it is
            self.record.rolled_back, self.record.reason = True, first_line(exc) or type(exc).__name__
            self.notes.append(f"left the model at opset {default_opset(model)}: converting it to {self.version} "
                              f"failed ({self.record.reason})")
            return False
        if before == self.version:
            return False
        infer_shapes(model)
        self.notes.append(f"converted the model from opset {before} to {self.version} for the target's ops")
        return True


class RecognisePass(_Pass):
    def __init__(self, kind: str, recognise: Callable[[Recognition], None], context: Recognition,
                 progress: Progress) -> None:
        super().__init__(f"recognise {kind}", progress)
        self.recognise, self.context = recognise, context

    def apply(self, model: ir.Model) -> bool:
        self.context.model = model
        count = len(self.context.sites)
        self.recognise(self.context)
        tidy(model)  # the matched subgraphs are dead now: later recognisers must not see their uses
        return len(self.context.sites) > count


class LowerPass(_Pass):
    """Every canonical op, rewritten for the target; each site learns what it became."""

    def __init__(self, lowering: Lowering, progress: Progress) -> None:
        super().__init__(f"lower for {lowering.target}", progress)
        self.lowering = lowering

    def apply(self, model: ir.Model) -> bool:
        canonical = [n for n in model.graph if n.domain == ATTNOPT_DOMAIN]
        # attention first: its fused kernel may take in the rotary embedding of its Q and K
        canonical.sort(key=lambda n: n.op_type != "Attention")
        for node in canonical:
            site: Site = node.meta[SITE_KEY]
            absorbed = node.meta.get(ABSORBED_KEY)
            form, fused = absorbed if absorbed is not None else self.lowering.lower(model, node)
            site.lowered(form, fused)
        model.opset_imports.pop(ATTNOPT_DOMAIN, None)
        tidy(model)
        infer_shapes(model)
        return bool(canonical)


class ShapeReadsPass(_Pass):
    """After lowering: what the fused ops left read only for its sizes (TorchScript's Q and V projections) reads
    them off the Reshape targets instead, and dies; reads of equal shapes read one value, so the per-layer size
    arithmetic is one. A whole-model pass, so rollback can take it back alone."""

    def apply(self, model: ir.Model) -> bool:
        rerouted = reroute_shape_reads(model) + share_equal_shape_reads(model)
        if rerouted:
            tidy(model)
        return bool(rerouted)


class ReshapeChainsPass(_Pass):
    """After lowering: Reshapes and Transposes that put data back where it was (TorchScript's head merge
    after the fused kernel's own) taken out (reshape_chains)."""

    def apply(self, model: ir.Model) -> bool:
        undone = undo_reshape_chains(model)
        if undone:
            tidy(model)
        return bool(undone)


class LastLogitsPass(_Pass):
    """After lowering: a decoder with a KV cache computes its LM head on the last position only, the logits a
    generator reads (last_logits); verification compares the logits there."""

    def __init__(self, name: str, progress: Progress, notes: list[str], target: str, all_logits: bool) -> None:
        super().__init__(name, progress)
        self.notes, self.target, self.all_logits = notes, target, all_logits

    def apply(self, model: ir.Model) -> bool:
        # TensorRT's parser takes no ArgMax with select_last_index (and attnopt builds no decoder engine)
        if self.all_logits or self.target == "trt" or keep_last_logits(model):
            return False
        self.notes.append("the LM head computes the last position's logits only, what a generator reads "
                          "(`attnopt quantize` restores every position while it measures)")
        return True


class TiedWeightsPass(_Pass):
    """Last: an LM head stored as a transposed copy of the embedding table reads the table instead (tied_weights;
    after every constant folding, which would write the copy back on a small model)."""

    def apply(self, model: ir.Model) -> bool:
        return share_transposed_copies(model) > 0


@dataclass
class PassesRun:
    model: ir.Model
    sites: list[Site]
    passes: list[PassRecord]
    notes: list[str]


def run_passes(model: ir.Model, lowering: Lowering, plan: Plan, *, all_logits: bool = False,
               progress: Progress = SILENT) -> PassesRun:
    """All passes for the lowering's target on `model` (in place), leaving out what `plan` says; a decoder's LM
    head keeps every position when `all_logits`."""
    target_opset = lowering.opset_for(default_opset(model))
    notes: list[str] = []
    context = Recognition(model, lowering.veto, excluded=dict(plan.excluded_sites))
    whole_model: list[_Pass] = [CleanupPass("cleanup", progress)]
    if default_opset(model) != target_opset:
        whole_model.insert(0, OpsetPass(target_opset, progress, notes))
    after_lowering: list[_Pass] = [ShapeReadsPass("shape reads", progress),
                                   ReshapeChainsPass("reshape chains", progress),
                                   LastLogitsPass("last logits", progress, notes, lowering.target, all_logits),
                                   TiedWeightsPass("tied weights", progress)]
    skipped = [p for p in whole_model + after_lowering if p.record.name in plan.skipped_passes]
    for p in skipped:
        p.record.rolled_back, p.record.reason = True, plan.skipped_passes[p.record.name]
    passes: list[_Pass] = [p for p in whole_model if p not in skipped]
    passes += [RecognisePass(kind, recognise, context, progress) for kind, recognise in RECOGNISERS]
    passes.append(LowerPass(lowering, progress))
    passes += [p for p in after_lowering if p not in skipped]
    if skipped and not any(isinstance(p, CleanupPass) for p in passes):
        tidy(model)  # recognisers still want a tidy, sorted graph
    ir.passes.PassManager(passes, steps=1)(model)
    if any(isinstance(p, OpsetPass) for p in skipped):
        notes.append(f"left the model at opset {default_opset(model)}: converting it to {target_opset} "
                     f"was rolled back ({plan.skipped_passes['opset']})")
    records = [p.record for p in whole_model] + [p.record for p in passes if p not in whole_model + after_lowering] \
        + [p.record for p in after_lowering]
    return PassesRun(model, context.sites, records, notes)
