"""TensorRT: no contrib ops; attention in the form its fused multi-head attention kernels recognise
(scale on Q, MatMul(Q, Kᵀ), Softmax, MatMul(P, V)), standard norms, GELU and rotary where the opset
has them."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.lower import Lowering
from attnopt.passes.lower.common import (Fused, decomposed_attention, replace_output, standard_gelu,
                                         standard_layernorm, standard_rmsnorm, standard_rotary)

#: what the report calls an attention site lowered for TensorRT: TensorRT fuses it when it builds
TENSORRT_FUSABLE = "TensorRT-fusable: Q scaled, MatMul(Q, Kᵀ), Softmax, MatMul(P, V)"


class TrtLowering(Lowering):
    target = "trt"
    min_opset = {"RMSNormalization": 23, "RotaryEmbedding": 23, "LayerNormalization": 17, "Gelu": 20}

    def attention(self, model: ir.Model, node: ir.Node) -> Fused:
        softmax, out = decomposed_attention(model.graph, node)
        replace_output(node, out)
        return TENSORRT_FUSABLE, softmax

    layernorm = staticmethod(standard_layernorm)
    rmsnorm = staticmethod(standard_rmsnorm)
    gelu = staticmethod(standard_gelu)
    rotary = staticmethod(standard_rotary)
