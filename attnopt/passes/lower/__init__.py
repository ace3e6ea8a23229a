"""Lowering: the canonical attnopt ops -> what one target runs best. One module per target holds all of
that target's rewrites and the veto that tells recognisers which canonical ops it cannot take; a new
target (a TensorRT version with new ops, another execution provider) is one new module, named here."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import onnx_ir as ir

from attnopt.passes.graph_utils import default_opset


#: set on a canonical node another one's lowering took into its fused kernel (rotary inside attention):
#: (what it became, the fused node that proves it)
ABSORBED_KEY = "attnopt.absorbed"


class Lowering:
    """One target. `veto` is asked before a canonical op is written (so a refused site keeps the model's
    own ops, exactly); `lower` then rewrites each accepted op and returns (what it became, the node that
    proves it in the output graph)."""

    target = ""
    #: canonical op -> the minimum opset the target's form of it needs (absent: any)
    min_opset: dict[str, int] = {}
    #: whether the target's cached attention runs a chunk of several new tokens on a past for a batch of
    #: many rows (verification feeds such a chunk at batch 1 where it does not)
    batched_chunks = True

    def veto(self, op_type: str, attributes: dict[str, Any], model: ir.Model,
             inputs: Sequence[ir.Value | None] = ()) -> str:
        opset, needed = default_opset(model), self.min_opset.get(op_type, 0)
        if opset < needed:
            return f"{self.form_name(op_type)} needs opset {needed}; the model has {opset}"
        return ""

    def form_name(self, op_type: str) -> str:
        return op_type

    def opset_for(self, opset: int) -> int:
        """The opset to convert a model at `opset` to before fusing (the model's own by default)."""
        return opset

    def describe(self) -> dict[str, Any]:
        """What the report records about the target beyond its name."""
        return {}

    def lower(self, model: ir.Model, node: ir.Node) -> tuple[str, ir.Node]:
        rewrite: Callable[[ir.Model, ir.Node], tuple[str, ir.Node]] = getattr(self, _METHODS[node.op_type])
        return rewrite(model, node)


#: canonical op -> the Lowering method that rewrites it
_METHODS = {"Attention": "attention", "LayerNormalization": "layernorm", "RMSNormalization": "rmsnorm",
            "Gelu": "gelu", "RotaryEmbedding": "rotary"}

TARGETS = ("onnx", "ort", "trt")


def lowering_for(target: str, tensorrt_version: str | None = None, positions: int | None = None,
                 onnxruntime_version: str | None = None) -> Lowering:
    """The target's lowering; for trt, against the operator table of `tensorrt_version` (default: the
    installed TensorRT's, else the newest); for ort, for `onnxruntime_version` (default: the installed one).
    `positions`: the model's context length where known (a decoder's export records it), for kernels that look
    rotary tables up by position."""
    from attnopt.passes.lower.onnx import OnnxLowering
    from attnopt.passes.lower.ort import OrtLowering, query_seqlens_for
    from attnopt.passes.lower.trt import TrtLowering

    if target == "trt":
        from attnopt.engine.optable import select_table

        return TrtLowering(select_table(tensorrt_version))
    if target == "ort":
        return OrtLowering(positions, query_seqlens_for(onnxruntime_version))
    return OnnxLowering()
