"""Attention, recognised from its math: softmax(scale * Q Kᵀ + mask) V -> one attnopt.Attention op.

Every Softmax is a site. From it the matcher walks up through masks (Add, boolean Where) and scalar
scales (Mul/Div by a constant, on the scores, on Q, on Kᵀ, or split over both) to MatMul(Q, Kᵀ), and
down through the IsNaN/Where guard to MatMul(P, V). Whatever the exporter wrote for Kᵀ, K is its last
two axes swapped back. Head counts come from the graph (static dims), never from the user.

The canonical op has the semantics of ONNX Attention (opset 23) on 4-D inputs:
  inputs  Q (B, Hq, Sq, D), K (B, Hkv, Sk, D), V (B, Hkv, Sk, Dv), mask (optional: bool keep-mask or
          float added to the scaled scores, broadcastable to (B, Hq, Sq, Sk))
  attrs   scale, q_num_heads, kv_num_heads, head_size, v_head_size (0 when not static), mask_is_bool,
          softcap (only where the scores are soft-capped: c * tanh(scale * Q Kᵀ / c), before the mask)
With a KV cache (K and V are Concat(past, new) on the sequence axis, the past a graph input and the
result returned as the present), the op takes the cache as ONNX Attention does:
  inputs  Q, K_new, V_new, mask (or absent), past_key, past_value (B, Hkv, P, D)
  outputs Y, present_key, present_value (B, Hkv, P + S, D); the mask covers all P + S keys
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.attention_match import AttentionMatch, match_attention
from attnopt.passes.fusion.recognition import Recognition
from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import (add_constant, attr, const_array, keep_as_bias, key_count_of, new_node,
                                        producer, replace_value)
from attnopt.passes.shapes import static_dims


def _unmerged_transpose(k_t: ir.Value) -> ir.Value | None:
    """Kᵀ written as Reshape(Transpose(Reshape(K, (B*H, S, D)), (0, 2, 1)), (B, H, D, S)) (the dynamo
    exporter's form): K itself, when the static dims show the reshapes only merge and split B and H."""
    outer = producer(k_t, "Reshape")
    transpose = producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = producer(transpose.inputs[0], "Reshape") if transpose is not None else None
    if inner is None or list(attr(transpose, "perm", []) or []) != [0, 2, 1]:
        return None
    k, out = static_dims(inner.inputs[0]), static_dims(k_t)
    if k is None or out is None or len(k) != 4 or len(out) != 4:
        return None
    if k[1] is None or k[1] != out[1] or k[3] is None or k[3] != out[2]:
        return None
    return inner.inputs[0]


def _k_from_k_t(graph: ir.Graph, before: ir.Node, k_t: ir.Value) -> ir.Value:
    """K is Kᵀ with its last two axes swapped back; reuse the exporter's own tensor where it is plain."""
    plain = _unmerged_transpose(k_t)
    if plain is not None:
        return plain
    node = producer(k_t, "Transpose")
    if node is not None:
        perm = list(attr(node, "perm", []) or [])
        if perm == [0, 1, 3, 2]:
            return node.inputs[0]
        if len(perm) == 4:
            undo = [perm[i] for i in (0, 1, 3, 2)]
            return new_node(graph, before, "Transpose", [node.inputs[0]], {"perm": undo}, name="K").outputs[0]
    return new_node(graph, before, "Transpose", [k_t], {"perm": [0, 1, 3, 2]}, name="K").outputs[0]


def _strip_kv_repeat(value: ir.Value) -> tuple[ir.Value, int | None]:
    """Grouped-query attention repeats K/V heads (Unsqueeze, Expand, Reshape); return the
    un-repeated tensor and its head count when the repeat is provable, else the value itself."""
    reshape = producer(value, "Reshape")
    expand = producer(reshape.inputs[0], "Expand") if reshape is not None else None
    if expand is not None:
        src_node = producer(expand.inputs[0], "Unsqueeze")
        axes = const_array(src_node.inputs[1]) if src_node is not None and len(src_node.inputs) > 1 else None
        if src_node is not None and axes is not None and [int(a) for a in axes.reshape(-1)] == [2]:
            src = src_node.inputs[0]
            src_dims, out_dims = static_dims(src), static_dims(value)
            if (src_dims and out_dims and len(src_dims) == 4 and len(out_dims) == 4 and src_dims[1] and out_dims[1]
                    and out_dims[1] % src_dims[1] == 0 and src_dims[3] == out_dims[3]):
                return src, src_dims[1]
    return value, None


def _cache_concat(value: ir.Value) -> ir.Node | None:
    """K or V written as Concat(past, new) on the sequence axis, the past a graph input and the result
    the graph's present output: that Concat."""
    concat = producer(value, "Concat")
    if concat is None or len(concat.inputs) != 2 or attr(concat, "axis", 0) not in (2, -2):
        return None
    past = concat.inputs[0]
    if past is None or not past.is_graph_input() or not value.is_graph_output():
        return None
    return concat


def _hand_over_present(graph: ir.Graph, concat: ir.Node, present: ir.Value) -> None:
    """The canonical op's present output becomes the graph output the Concat wrote; readers of the
    Concat's shape get it from the past and the new part, so that the Concat itself can go."""
    old = concat.outputs[0]
    index = list(graph.outputs).index(old)
    present.shape, present.type = old.shape, old.type
    name = old.name
    old.name = f"{name}__replaced"
    graph.outputs[index] = present
    present.name = name
    for reader in [u for u in old.consumers() if u.op_type == "Shape" and u.domain in ("", "ai.onnx")]:
        replace_value(reader.outputs[0], _concat_shape(graph, reader, concat, attr(reader, "start", 0),
                                                       attr(reader, "end", None)))


def _concat_shape(graph: ir.Graph, before: ir.Node, concat: ir.Node, start: int, end: int | None) -> ir.Value:
    """Shape(Concat(past, new) on axis 2)[start:end], from the shapes of past and new."""
    past, new = concat.inputs
    lead = new_node(graph, before, "Shape", [past], {"start": 0, "end": 2}, name="cache_lead").outputs[0]
    keys = key_count_of(graph, before, past, new)
    tail = new_node(graph, before, "Shape", [new], {"start": 3}, name="cache_tail").outputs[0]
    shape = new_node(graph, before, "Concat", [lead, keys, tail], {"axis": 0}, name="cache_shape").outputs[0]
    if start == 0 and end is None:
        return shape
    bounds = [add_constant(graph, np.array([b], dtype=np.int64), f"{before.name}_cache_b")
              for b in (start, end if end is not None else 4)]
    return new_node(graph, before, "Slice", [shape, *bounds], name="cache_shape_part").outputs[0]


def _combined_mask(graph: ir.Graph, before: ir.Node, match: AttentionMatch) -> tuple[ir.Value | None, bool]:
    """One mask for the canonical op. A Where with a -inf fill stays a boolean keep-mask; a finite fill
    (finfo.min) becomes an additive bias, which keeps the model's result on rows with every key masked
    (uniform weights, where a boolean mask would give NaN)."""
    keep: ir.Value | None = None
    finite: list[tuple[ir.Value, float]] = []
    for cond, keep_where_true, fill in match.keep_masks:
        c = cond if keep_where_true else new_node(graph, before, "Not", [cond], name="mask_not").outputs[0]
        if np.isfinite(fill):
            finite.append((c, fill))
            continue
        keep = c if keep is None else new_node(graph, before, "And", [keep, c], name="mask_and").outputs[0]
    additive: ir.Value | None = None
    for c, fill in finite:
        term = keep_as_bias(graph, before, c, fill, name="mask_fill")
        additive = term if additive is None else new_node(graph, before, "Add", [additive, term], name="mask_add").outputs[0]
    for mask, factor, merged in match.float_masks:
        term = mask
        if merged:  # added to the (batch*heads, q, k) scores: view it as the scores were viewed
            term = new_node(graph, before, "Reshape", [mask, match.heads_view.inputs[1]], name="mask_view").outputs[0]
        if factor != 1.0:
            scale = add_constant(graph, np.array(factor, dtype=np.float32), f"{before.name}_mask_scale")
            term = new_node(graph, before, "Mul", [term, scale], name="mask_scale").outputs[0]
        additive = term if additive is None else new_node(graph, before, "Add", [additive, term], name="mask_add").outputs[0]
    if additive is None:
        return keep, keep is not None
    if keep is not None:  # mixed: turn the keep-mask into an additive one
        as_float = keep_as_bias(graph, before, keep, name="mask_where")
        additive = new_node(graph, before, "Add", [additive, as_float], name="mask_add").outputs[0]
    return additive, False


def fuse_matched(ctx: Recognition, site: Site, match: AttentionMatch) -> ir.Node:
    """Replace the matched block with one attnopt.Attention node producing the same tensor. Nodes
    written before the target's veto only read existing values: a refused site leaves them dead."""
    graph = ctx.graph
    pv = match.out.producer()
    if match.heads_view is not None:
        _split_merged_heads(graph, pv, match)
    k = _k_from_k_t(graph, pv, match.k_t)
    k, kv_heads_k = _strip_kv_repeat(k)
    v, kv_heads_v = _strip_kv_repeat(match.v)
    if kv_heads_k != kv_heads_v:  # only strip when both K and V are provably repeated alike
        k = _k_from_k_t(graph, pv, match.k_t) if kv_heads_k else k
        v = match.v
    caches = (_cache_concat(k), _cache_concat(v))
    past: tuple[ir.Value, ir.Value] | None = None
    if caches[0] is not None and caches[1] is not None:
        past = (caches[0].inputs[0], caches[1].inputs[0])
        k, v = caches[0].inputs[1], caches[1].inputs[1]
    q_dims = static_dims(match.q) or [None] * 4
    kv_dims = static_dims(v) or [None] * 4
    mask, mask_is_bool = _combined_mask(graph, pv, match)
    inputs = [match.q, k, v, mask] + (list(past) if past is not None else [])
    while inputs[-1] is None:
        inputs.pop()
    attributes = {
        "scale": float(match.scale),
        "q_num_heads": int(q_dims[1] or 0),
        "kv_num_heads": int(kv_dims[1] or 0),
        "head_size": int(q_dims[3] or 0),
        "v_head_size": int(kv_dims[3] or 0),
        # dtypes of intermediate values are often unknown (TorchScript exports): say which mask this is
        "mask_is_bool": int(mask_is_bool),
    }
    if match.softcap:
        attributes["softcap"] = float(match.softcap)
    node = ctx.emit(site, pv, "Attention", inputs, attributes, name="attention", num_outputs=3 if past is not None else 1)
    _reroute_shape_readers(graph, pv, match, past[0] if past else None, k)
    if past is not None:
        for concat, present in zip(caches, node.outputs[1:]):
            _hand_over_present(graph, concat, present)  # type: ignore[arg-type]
    out = node.outputs[0]
    if match.heads_view is not None:  # back to (batch*heads, q, size) for the model's own reshapes
        out.shape = None
        minus = add_constant(graph, np.array([-1], dtype=np.int64), f"{pv.name}_merge")
        tail = new_node(graph, pv, "Shape", [out], {"start": 2}, name="merge_tail").outputs[0]
        shape = new_node(graph, pv, "Concat", [minus, tail], {"axis": 0}, name="merge_shape").outputs[0]
        out = new_node(graph, pv, "Reshape", [out, shape], name="merge_heads").outputs[0]
    replace_value(match.out, out)
    return node


def _reroute_shape_readers(graph: ir.Graph, before: ir.Node, match: AttentionMatch, past: ir.Value | None,
                           k: ir.Value) -> None:
    """Shape(P) becomes the same shape computed from Q and the key count, so that P and the scores can go."""
    if not match.shape_readers:
        return
    keys = key_count_of(graph, before, past, k)
    lead = new_node(graph, before, "Shape", [match.q], {"start": 0, "end": 3}, name="probs_lead").outputs[0]
    shape = new_node(graph, before, "Concat", [lead, keys], {"axis": 0}, name="probs_shape").outputs[0]
    for reader in match.shape_readers:
        start, end = attr(reader, "start", 0), attr(reader, "end", None)
        value = shape
        if start != 0 or end is not None:
            bounds = [add_constant(graph, np.array([b], dtype=np.int64), f"{before.name}_probs_b")
                      for b in (start, end if end is not None else 4)]
            value = new_node(graph, before, "Slice", [shape, *bounds], name="probs_shape_part").outputs[0]
        replace_value(reader.outputs[0], value)


def _heads(graph: ir.Graph, before: ir.Node, x: ir.Value, heads: int) -> ir.Value:
    """(batch*heads, s, d) -> (batch, heads, s, d): the tensor before the model merged it, when it
    is plainly there, else a Reshape."""
    merge = producer(x, "Reshape")
    if merge is not None:
        src = static_dims(merge.inputs[0])
        if src is not None and len(src) == 4 and src[1] == heads:
            return merge.inputs[0]
    lead = add_constant(graph, np.array([-1, heads], dtype=np.int64), f"{before.name}_heads")
    tail = new_node(graph, before, "Shape", [x], {"start": 1}, name="split_tail").outputs[0]
    shape = new_node(graph, before, "Concat", [lead, tail], {"axis": 0}, name="split_shape").outputs[0]
    out = new_node(graph, before, "Reshape", [x, shape], name="split_heads").outputs[0]
    dims = static_dims(x)
    if dims and x.type is not None:
        out.type, out.shape = x.type, ir.Shape([None, heads, dims[1], dims[2]])
    return out


def _split_merged_heads(graph: ir.Graph, before: ir.Node, match: AttentionMatch) -> None:
    heads = static_dims(match.heads_view.outputs[0])[1]
    t = producer(match.k_t, "Transpose")
    k3 = t.inputs[0] if t is not None and list(attr(t, "perm", []) or []) == [0, 2, 1] else \
        new_node(graph, before, "Transpose", [match.k_t], {"perm": [0, 2, 1]}, name="K3").outputs[0]
    k4 = _heads(graph, before, k3, heads)
    match.q, match.v = _heads(graph, before, match.q, heads), _heads(graph, before, match.v, heads)
    match.k_t = new_node(graph, before, "Transpose", [k4], {"perm": [0, 1, 3, 2]}, name="Kt4").outputs[0]


def adopt_onnx_attention(ctx: Recognition, site: Site, node: ir.Node) -> None:
    """An ONNX Attention op (opset 23) is already a recognised site; take it into the canonical form
    when its inputs are plain 4-D and it uses no cache or causal flag."""
    if len(node.inputs) > 4 or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
        raise Reject("ONNX Attention with a KV cache or extra outputs is kept as it is")
    if attr(node, "is_causal", 0) or attr(node, "qk_matmul_output_mode", 0):
        raise Reject("ONNX Attention with is_causal or qk output mode is kept as it is")
    q_dims = static_dims(node.inputs[0])
    if q_dims is None or len(q_dims) != 4:
        raise Reject("ONNX Attention with 3-D inputs is kept as it is")
    scale = attr(node, "scale", None)
    if scale is None:
        if not q_dims[3]:
            raise Reject("ONNX Attention without a scale and with a dynamic head size")
        scale = 1.0 / float(np.sqrt(q_dims[3]))
    kv_dims = static_dims(node.inputs[2]) or [None] * 4
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    ctx.adopt(site, node, "Attention", {
        "scale": float(scale), "q_num_heads": int(q_dims[1] or 0), "kv_num_heads": int(kv_dims[1] or 0),
        "head_size": int(q_dims[3] or 0), "v_head_size": int(kv_dims[3] or 0),
        "mask_is_bool": int(mask is not None and mask.dtype == ir.DataType.BOOL),
        **({"softcap": float(attr(node, "softcap", 0.0))} if attr(node, "softcap", 0.0) else {})})


def recognise_attention(ctx: Recognition) -> None:
    graph = ctx.graph
    ctx.each("attention", [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")],
             lambda site, node: adopt_onnx_attention(ctx, site, node), already_fused=True)
    ctx.each("attention", [n for n in graph if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")],
             lambda site, softmax: fuse_matched(ctx, site, match_attention(softmax, ctx.opset)))
