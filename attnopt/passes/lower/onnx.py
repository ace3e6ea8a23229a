"""Standard ONNX: the opset-23 ops (Attention, RMSNormalization, RotaryEmbedding), LayerNormalization
and Gelu. The optimize use case upgrades the model to opset 23 first; where that was rolled back, the
veto leaves the sites that need it as the model wrote them, each with the reason."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, new_node
from attnopt.passes.lower import Lowering
from attnopt.passes.lower.common import (Fused, full_mask, replace_output, standard_gelu, standard_layernorm,
                                         standard_rmsnorm, standard_rotary)

#: the opset whose ops this target writes
ONNX_TARGET_OPSET = 23


class OnnxLowering(Lowering):
    target = "onnx"
    min_opset = {"Attention": 23, "RMSNormalization": 23, "RotaryEmbedding": 23, "LayerNormalization": 17,
                 "Gelu": 20}

    def form_name(self, op_type: str) -> str:
        return f"ONNX {op_type}"

    def opset_for(self, opset: int) -> int:
        return max(opset, ONNX_TARGET_OPSET)

    def attention(self, model: ir.Model, node: ir.Node) -> Fused:
        graph = model.graph
        inputs = list(node.inputs)
        if len(inputs) > 3:
            mask = inputs[3]
            if not attr(node, "mask_is_bool", 0):
                # onnxruntime's Attention zeroes rows whose bias is at float32's lowest, where the model
                # (finfo.min fills) averages them uniformly; -1e30 masks exactly the same elsewhere
                floor = add_constant(graph, np.array(-1e30, dtype=np.float32), f"{node.name}_mask_floor")
                mask = new_node(graph, node, "Max", [mask, floor], name="mask_floor").outputs[0]
            inputs[3] = full_mask(graph, node, mask, inputs[0], inputs[1])
        attention = new_node(graph, node, "Attention", inputs, {"scale": float(attr(node, "scale", 1.0))},
                             name="attention")
        replace_output(node, attention.outputs[0])
        return "ONNX Attention (opset 23)", attention

    layernorm = staticmethod(standard_layernorm)
    rmsnorm = staticmethod(standard_rmsnorm)
    gelu = staticmethod(standard_gelu)
    rotary = staticmethod(standard_rotary)
