"""Standard ONNX: the opset-23 ops (Attention, RMSNormalization, RotaryEmbedding), LayerNormalization
and Gelu. The optimize use case upgrades the model to opset 23 first; where that was rolled back, the
veto leaves the sites that need it as the model wrote them, each with the reason."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.graph_utils import attr, new_node, replace_value
from attnopt.passes.lower import Lowering
from attnopt.passes.lower.common import (Fused, cache_inputs, float_bias, full_mask, key_count, replace_output,
                                         standard_gelu, standard_layernorm, standard_rmsnorm, standard_rotary)

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
        """ONNX Attention, with past_key / past_value and the present outputs where the site has a cache.
        The mask is explicit (is_causal stays 0), so there is no question of how causal masks align
        when the queries are fewer than the keys."""
        graph = model.graph
        inputs = list(node.inputs)
        past = cache_inputs(node)
        if len(inputs) > 3 and inputs[3] is not None:
            # onnxruntime's Attention zeroes rows whose bias is at float32's lowest, where the model
            # (finfo.min fills) averages them uniformly; the floored bias masks exactly the same elsewhere
            mask = inputs[3] if attr(node, "mask_is_bool", 0) else float_bias(graph, node, inputs[3])
            inputs[3] = full_mask(graph, node, mask, inputs[0], inputs[1],
                                  keys=key_count(graph, node) if past is not None else None)
        attributes = {"scale": float(attr(node, "scale", 1.0))}
        if attr(node, "softcap", 0.0):  # applied before the mask, as the model does
            attributes["softcap"] = float(attr(node, "softcap", 0.0))
        attention = new_node(graph, node, "Attention", inputs, attributes,
                             num_outputs=len(node.outputs), name="attention")
        for old, new in zip(node.outputs[1:], attention.outputs[1:]):
            replace_value(old, new)
        replace_output(node, attention.outputs[0])
        return ("ONNX Attention (opset 23, with past)" if past is not None else "ONNX Attention (opset 23)"), attention

    layernorm = staticmethod(standard_layernorm)
    rmsnorm = staticmethod(standard_rmsnorm)
    gelu = staticmethod(standard_gelu)
    rotary = staticmethod(standard_rotary)
