"""Standard ONNX: opset-23 Attention where the model's opset allows, else the plain decomposed form."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, default_opset, new_node
from attnopt.passes.lower.common import decomposed_attention, full_mask, replace_output


def lower_attention(model: ir.Model, node: ir.Node) -> str:
    graph = model.graph
    if default_opset(model) >= 23:
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
        return "ONNX Attention (opset 23)"
    replace_output(node, decomposed_attention(graph, node))
    return "decomposed (opset < 23 has no Attention op)"
