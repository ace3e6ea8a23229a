"""Pieces every lowering needs: the decomposed attention, float masks, repeated K/V heads."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, keep_as_bias, new_node, replace_value
from attnopt.passes.shapes import static_dims


def float_bias(graph: ir.Graph, before: ir.Node, mask: ir.Value) -> ir.Value:
    """The canonical op's keep-mask (bool) as an additive float bias; a float mask as it is."""
    if not attr(before, "mask_is_bool", 0):
        return mask
    return keep_as_bias(graph, before, mask)


def _same_axis(a: ir.Value, i: int, b: ir.Value, j: int) -> bool:
    """Axis i of a and axis j of b are the same named symbolic dimension (or the same size > 1)."""
    if a.shape is None or b.shape is None or len(a.shape) <= i or len(b.shape) <= j:
        return False
    x, y = a.shape[i], b.shape[j]
    if isinstance(x, int) or isinstance(y, int):
        return isinstance(x, int) and isinstance(y, int) and x == y and x > 1
    return bool(x.value) and x.value == y.value


def full_mask(graph: ir.Graph, node: ir.Node, mask: ir.Value, q: ir.Value, k: ir.Value, seq_axis: int = 2) -> ir.Value:
    """The mask broadcast to 4-D (B or 1, H or 1, Sq, Sk): ONNX Runtime's attention kernels
    (MultiHeadAttention, and ONNX Attention on CPU) do not broadcast the two sequence axes.
    Sq and Sk are read off q and k at `seq_axis` (2 for (B, H, S, D) tensors, 1 for (B, S, hidden))."""
    dims = static_dims(mask)
    if dims is not None and len(dims) < 4:
        axes = add_constant(graph, np.arange(4 - len(dims), dtype=np.int64), f"{node.name}_mask_axes")
        mask = new_node(graph, node, "Unsqueeze", [mask, axes], name="mask_4d").outputs[0]
        dims = [1] * (4 - len(dims)) + dims
    if dims is not None and all(isinstance(d, int) and d > 1 for d in dims[2:]):
        return mask
    if _same_axis(mask, 2, q, seq_axis) and _same_axis(mask, 3, k, seq_axis):
        return mask  # symbolically (.., Sq, Sk) already, as the masks transformers builds are
    sq = new_node(graph, node, "Shape", [q], {"start": seq_axis, "end": seq_axis + 1}, name="sq").outputs[0]
    sk = new_node(graph, node, "Shape", [k], {"start": seq_axis, "end": seq_axis + 1}, name="sk").outputs[0]
    ones = add_constant(graph, np.array([1, 1], dtype=np.int64), f"{node.name}_mask_ones")
    target = new_node(graph, node, "Concat", [ones, sq, sk], {"axis": 0}, name="mask_shape").outputs[0]
    return new_node(graph, node, "Expand", [mask, target], name="mask_full").outputs[0]


def repeat_kv(graph: ir.Graph, before: ir.Node, x: ir.Value, q_heads: int, kv_heads: int, head_size: int) -> ir.Value:
    """(B, Hkv, S, D) -> (B, Hq, S, D), each key/value head repeated Hq / Hkv times."""
    if q_heads == kv_heads:
        return x
    rep = q_heads // kv_heads
    axes = add_constant(graph, np.array([2], dtype=np.int64), f"{before.name}_kv_axes")
    grow = add_constant(graph, np.array([1, 1, rep, 1, 1], dtype=np.int64), f"{before.name}_kv_expand")
    merge = add_constant(graph, np.array([0, q_heads, -1, head_size], dtype=np.int64), f"{before.name}_kv_shape")
    x = new_node(graph, before, "Unsqueeze", [x, axes], name="kv_unsqueeze").outputs[0]
    x = new_node(graph, before, "Expand", [x, grow], name="kv_expand").outputs[0]
    return new_node(graph, before, "Reshape", [x, merge], name="kv_reshape").outputs[0]


def kv_for_all_heads(graph: ir.Graph, node: ir.Node) -> tuple[ir.Value, ir.Value]:
    """K and V with as many heads as Q (repeated for grouped-query attention)."""
    q_heads, kv_heads = attr(node, "q_num_heads", 0), attr(node, "kv_num_heads", 0)
    k, v = node.inputs[1], node.inputs[2]
    if q_heads and kv_heads and q_heads != kv_heads:
        k = repeat_kv(graph, node, k, q_heads, kv_heads, attr(node, "head_size", 0) or -1)
        v = repeat_kv(graph, node, v, q_heads, kv_heads, attr(node, "v_head_size", 0) or -1)
    return k, v


def decomposed_attention(graph: ir.Graph, node: ir.Node) -> ir.Value:
    """softmax((Q * scale) Kᵀ + bias) V in plain ONNX, with the scale on Q before the first MatMul:
    the form TensorRT's fused multi-head attention recognises."""
    q = node.inputs[0]
    k, v = kv_for_all_heads(graph, node)
    scale = add_constant(graph, np.array(attr(node, "scale", 1.0), dtype=np.float32), f"{node.name}_scale")
    q = new_node(graph, node, "Mul", [q, scale], name="q_scaled").outputs[0]
    k_t = new_node(graph, node, "Transpose", [k], {"perm": [0, 1, 3, 2]}, name="k_t").outputs[0]
    scores = new_node(graph, node, "MatMul", [q, k_t], name="scores").outputs[0]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None:
        scores = new_node(graph, node, "Add", [scores, float_bias(graph, node, mask)], name="masked").outputs[0]
    probs = new_node(graph, node, "Softmax", [scores], {"axis": -1}, name="probs").outputs[0]
    return new_node(graph, node, "MatMul", [probs, v], name="context").outputs[0]


def replace_output(node: ir.Node, value: ir.Value) -> None:
    out = node.outputs[0]
    replace_value(out, value)
    node.graph.remove(node, safe=True)
