"""TensorRT, per version: what the ONNX parser of the TensorRT in use imports (its operator table,
attnopt/engine/data), no contrib ops. Attention in the form TensorRT's fused multi-head attention
kernels recognise (scale on Q, MatMul(Q, Kᵀ), Softmax, MatMul(P, V)); LayerNormalization, Gelu,
RMSNormalization and RotaryEmbedding where the table (and the opset it converts to) has them."""

from __future__ import annotations

from typing import Any, Sequence

import onnx_ir as ir

from attnopt.engine.optable import OperatorTable
from attnopt.passes.graph_utils import attr
from attnopt.passes.lower import Lowering
from attnopt.passes.lower.common import (Fused, concatenate_cache, decomposed_attention, replace_output,
                                         standard_gelu, standard_layernorm, standard_rmsnorm, standard_rotary)

#: what the report calls an attention site lowered for TensorRT: TensorRT fuses it when it builds
TENSORRT_FUSABLE = "TensorRT-fusable: Q scaled, MatMul(Q, Kᵀ), Softmax, MatMul(P, V)"
#: the opset whose RMSNormalization and RotaryEmbedding the newer parsers read
_NORM_AND_ROTARY_OPSET = 23


class TrtLowering(Lowering):
    target = "trt"
    min_opset = {"RMSNormalization": 23, "RotaryEmbedding": 23, "LayerNormalization": 17, "Gelu": 20}

    def __init__(self, table: OperatorTable) -> None:
        self.table = table

    def opset_for(self, opset: int) -> int:
        """Into the table's range; up to 23 where the parser reads opset 23 (RMSNorm, rotary)."""
        wanted = max(opset, _NORM_AND_ROTARY_OPSET) if self.table.max_opset >= _NORM_AND_ROTARY_OPSET else opset
        return self.table.clamp_opset(wanted)

    def veto(self, op_type: str, attributes: dict[str, Any], model: ir.Model,
             inputs: Sequence[ir.Value | None] = ()) -> str:
        if op_type != "Attention" and not self.table.supports(op_type):
            return f"TensorRT {self.table.version}'s ONNX parser has no {op_type}"
        return super().veto(op_type, attributes, model, inputs)

    def describe(self) -> dict[str, Any]:
        return {"tensorrt_table": self.table.describe()}

    def attention(self, model: ir.Model, node: ir.Node) -> Fused:
        node = concatenate_cache(model.graph, node)  # the cache stays Concat(past, new), which TensorRT reads
        softmax, out = decomposed_attention(model.graph, node)
        replace_output(node, out)
        if attr(node, "softcap", 0.0):  # the tanh between the MatMuls is outside TensorRT's attention fusion
            return "scale on Q, MatMul, soft-cap (tanh), Softmax, MatMul", softmax
        return TENSORRT_FUSABLE, softmax

    layernorm = staticmethod(standard_layernorm)
    rmsnorm = staticmethod(standard_rmsnorm)
    gelu = staticmethod(standard_gelu)
    rotary = staticmethod(standard_rotary)
