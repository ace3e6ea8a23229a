"""ONNX Runtime: contrib MultiHeadAttention (CPU and CUDA kernels), fed without extra transposes
where the exporter's own head split and merge can be seen through."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import (MS_DOMAIN, add_constant, attr, const_array, ensure_opset, new_node,
                                        only_consumer, producer, replace_value, shape_pieces, static_dims)
from attnopt.passes.lower.common import float_bias, full_mask, kv_for_all_heads, replace_output
from attnopt.passes.lower.trt import lower_attention as lower_decomposed


def _query_bsd(graph: ir.Graph, node: ir.Node, heads: int, size: int) -> ir.Value:
    """Q as (B, S, H*D): the tensor before the exporter's Reshape+Transpose, or a new merge."""
    q = node.inputs[0]
    split = producer(q, "Transpose")
    if split is not None and list(attr(split, "perm", []) or []) == [0, 2, 1, 3]:
        reshape = producer(split.inputs[0], "Reshape")
        if reshape is not None:
            src = static_dims(reshape.inputs[0])
            pieces = shape_pieces(reshape.inputs[1])
            if src is not None and len(src) == 3 and pieces is not None and pieces[2:] in ([heads, size], [-1, size]):
                return reshape.inputs[0]
    q = new_node(graph, node, "Transpose", [q], {"perm": [0, 2, 1, 3]}, name="q_bshd").outputs[0]
    shape = add_constant(graph, np.array([0, 0, heads * size], dtype=np.int64), f"{node.name}_q_shape")
    return new_node(graph, node, "Reshape", [q, shape], name="q_bsd").outputs[0]


def _merged_output(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """The exporter's Transpose+Reshape that merges heads back to (B, S, H*Dv), when that is all
    the attention output feeds: MultiHeadAttention already produces that tensor."""
    out = node.outputs[0]
    transpose = only_consumer(out)
    if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm", []) or []) != [0, 2, 1, 3]:
        return None
    reshape = only_consumer(transpose.outputs[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    pieces = shape_pieces(reshape.inputs[1])
    heads, size = attr(node, "q_num_heads", 0), attr(node, "v_head_size", 0)
    if pieces is None or len(pieces) != 3 or pieces[2] not in (heads * size, -1):
        return None
    if pieces[2] == -1 and (pieces[0] in (None, -1) or pieces[1] in (None, -1)) and const_array(reshape.inputs[1]) is None:
        return None  # two unknown axes besides -1 cannot be told apart statically
    return transpose, reshape


def lower_attention(model: ir.Model, node: ir.Node) -> str:
    graph = model.graph
    heads, size, v_size = attr(node, "q_num_heads", 0), attr(node, "head_size", 0), attr(node, "v_head_size", 0)
    if not (heads and size and v_size):
        return lower_decomposed(model, node) + " (head count or size not static: no MultiHeadAttention)"
    ensure_opset(model, MS_DOMAIN, 1)
    query = _query_bsd(graph, node, heads, size)
    key, value = kv_for_all_heads(graph, node)
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    inputs = [query, key, value, None, None, None]
    if mask is not None:
        inputs[5] = full_mask(graph, node, float_bias(graph, node, mask), node.inputs[0], key)
    while inputs[-1] is None:
        inputs.pop()
    mha = new_node(graph, node, "MultiHeadAttention", inputs, {"num_heads": heads, "scale": float(attr(node, "scale"))},
                   domain=MS_DOMAIN, name="mha")
    merge = _merged_output(node)
    if merge is not None:
        transpose, reshape = merge
        merged = reshape.outputs[0]
        replace_value(merged, mha.outputs[0])
        graph.remove([reshape, transpose, node], safe=True)
        return "MultiHeadAttention"
    shape = add_constant(graph, np.array([0, 0, heads, v_size], dtype=np.int64), f"{node.name}_out_shape")
    split = new_node(graph, node, "Reshape", [mha.outputs[0], shape], name="out_bshd").outputs[0]
    bhsd = new_node(graph, node, "Transpose", [split], {"perm": [0, 2, 1, 3]}, name="out_bhsd").outputs[0]
    replace_output(node, bhsd)
    return "MultiHeadAttention"
