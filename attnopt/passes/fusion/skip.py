"""ONNX Runtime's Skip*Normalization: the residual Add before a norm, folded into the norm kernel."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.fusion.match import one_d_const, other_input
from attnopt.passes.graph_utils import MS_DOMAIN, ensure_opset, new_node, only_consumer, producer, replace_value


def _same_known_shape(a: ir.Value, b: ir.Value) -> bool:
    """Both shapes fully known (ints or named symbols) and equal: the Add has no broadcast."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape) or len(a.shape) not in (2, 3):
        return False
    for x, y in zip(a.shape, b.shape):
        if isinstance(x, int) and isinstance(y, int):
            if x != y:
                return False
        elif isinstance(x, int) or isinstance(y, int) or not x.value or x.value != y.value:
            return False
    return True


def fold_residual(model: ir.Model, norm: ir.Node, op_type: str, x: ir.Value, gamma: ir.Value,
                  beta: ir.Value | None, epsilon: float) -> bool:
    """Replace norm(Add(a, b)) by op_type(a, b, gamma, beta, bias) when the Add provably does not
    broadcast; a 1-D constant added to `a` just before becomes the kernel's bias input."""
    add = producer(x, "Add")
    if add is None or not _same_known_shape(add.inputs[0], add.inputs[1]):
        return False
    graph = model.graph
    a, b = add.inputs
    bias = None
    for first, second in ((a, b), (b, a)):
        inner = producer(first, "Add")
        if inner is not None and only_consumer(first) is add:
            const = next((v for v in inner.inputs if one_d_const(v, None)), None)
            if const is not None:
                a, b, bias = other_input(inner, const), second, const
                break
    ensure_opset(model, MS_DOMAIN, 1)
    simplified = op_type == "SkipSimplifiedLayerNormalization"
    inputs = [a, b, gamma] + ([] if simplified else [beta]) + [bias]
    while inputs and inputs[-1] is None:
        inputs.pop()
    fused = new_node(graph, norm, op_type, inputs, {"epsilon": float(epsilon)}, domain=MS_DOMAIN,
                     num_outputs=4, name="skip_norm")
    out = norm.outputs[0]
    replace_value(out, fused.outputs[0])
    if any(u is not norm for u in x.consumers()) or x.is_graph_output():
        # the residual stream goes on: later layers read the sum from the kernel's fourth output
        replace_value(x, fused.outputs[3])
    return True
