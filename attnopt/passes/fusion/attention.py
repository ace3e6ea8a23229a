"""Attention, recognised from its math: softmax(scale * Q Kᵀ + mask) V -> one attnopt.Attention op.

Every Softmax is a site. From it the matcher walks up through masks (Add, boolean Where) and scalar
scales (Mul/Div by a constant, on the scores, on Q, on Kᵀ, or split over both) to MatMul(Q, Kᵀ), and
down through the IsNaN/Where guard to MatMul(P, V). Whatever the exporter wrote for Kᵀ, K is its last
two axes swapped back. Head counts come from the graph (static dims), never from the user.

The canonical op has the semantics of ONNX Attention (opset 23) on 4-D inputs:
  inputs  Q (B, Hq, Sq, D), K (B, Hkv, Sk, D), V (B, Hkv, Sk, Dv), mask (optional: bool keep-mask or
          float added to the scaled scores, broadcastable to (B, Hq, Sq, Sk))
  attrs   scale, q_num_heads, kv_num_heads, head_size, v_head_size (0 when not static), mask_is_bool
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.sites import FusionOutcome, Reject
from attnopt.passes.graph_utils import (ATTNOPT_DOMAIN, add_constant, attr, const_array, const_scalar, consumers,
                                        new_node, only_consumer, producer, replace_value, static_dims)

#: a constant at or below this (or -inf) in a Where against the scores is a masking fill
MASK_FILL_MAX = -1e4
_SCORE_WALK_LIMIT = 8


@dataclass
class AttentionMatch:
    softmax: ir.Node
    q: ir.Value
    k_t: ir.Value  # Kᵀ as the graph has it (scale stripped)
    v: ir.Value
    out: ir.Value  # the output of MatMul(P, V)
    scale: float
    float_masks: list[tuple[ir.Value, float]] = field(default_factory=list)  # (mask, factor it is scaled by)
    keep_masks: list[tuple[ir.Value, bool]] = field(default_factory=list)  # (condition, True = keep where true)
    guard: bool = False


def _strip_scalar(value: ir.Value) -> tuple[ir.Value, float]:
    """Peel Mul/Div by scalar constants off a value: returns the inner value and the factor."""
    factor = 1.0
    for _ in range(4):
        node = producer(value, "Mul", "Div")
        if node is None:
            break
        a, b = node.inputs
        if node.op_type == "Mul":
            ca, cb = const_scalar(a), const_scalar(b)
            if cb is not None:
                value, factor = a, factor * cb
            elif ca is not None:
                value, factor = b, factor * ca
            else:
                break
        else:
            cb = const_scalar(b)
            if cb is None or cb == 0:
                break
            value, factor = a, factor / cb
    return value, factor


def _leads_to_scores(value: ir.Value, depth: int = 0) -> bool:
    """True when walking up through masks and scales reaches a MatMul (the QKᵀ product)."""
    node = producer(value)
    if node is None or depth > _SCORE_WALK_LIMIT:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type in ("Add", "Mul", "Div", "Where"):
        return any(_leads_to_scores(v, depth + 1) for v in node.inputs if v is not None and const_array(v) is None)
    return False


def _is_fill(value: ir.Value) -> bool:
    array = const_array(value)
    return array is not None and array.size >= 1 and bool(np.all(array <= MASK_FILL_MAX))


def _walk_scores(scores: ir.Value, match: AttentionMatch) -> ir.Value:
    """From the Softmax input up to MatMul(Q, Kᵀ), collecting masks and scales. Returns the MatMul output."""
    factor = 1.0  # product of the scales met so far: masks below them are scaled by it too
    value = scores
    for _ in range(_SCORE_WALK_LIMIT):
        node = producer(value)
        if node is None:
            raise Reject(f"the scores come from a graph input or initializer, not MatMul(Q, Kᵀ)")
        op = node.op_type
        if op == "MatMul":
            match.scale *= factor
            return value
        if op in ("Mul", "Div"):
            inner, f = _strip_scalar(value)
            if inner is value:
                raise Reject(f"the scores are multiplied by a non-constant ({node.name})")
            if f <= 0:
                raise Reject(f"scale {f:g} is not positive ({node.name})")
            factor *= f
            value = inner
        elif op == "Add":
            a, b = node.inputs
            if _leads_to_scores(a) and not _leads_to_scores(b):
                value, mask = a, b
            elif _leads_to_scores(b) and not _leads_to_scores(a):
                value, mask = b, a
            else:
                raise Reject(f"cannot tell the scores from the bias in {node.name}")
            match.float_masks.append((mask, factor))
        elif op == "Where":
            cond, a, b = node.inputs
            if _is_fill(b) and _leads_to_scores(a):
                match.keep_masks.append((cond, True))
                value = a
            elif _is_fill(a) and _leads_to_scores(b):
                match.keep_masks.append((cond, False))
                value = b
            else:
                raise Reject(f"{node.name} selects between scores and something that is not a mask fill")
        else:
            raise Reject(f"the scores pass through {op} ({node.name}), which is not a mask or a scale")
    raise Reject("too many operations between Softmax and MatMul(Q, Kᵀ)")


def _find_pv(softmax: ir.Node) -> tuple[ir.Node, bool]:
    """From the Softmax output down to MatMul(P, V), through the IsNaN/Where guard.
    Returns that MatMul and whether a guard was passed."""
    probs = softmax.outputs[0]
    users = consumers(probs)
    guard = False
    isnan = [u for u in users if u.op_type == "IsNaN"]
    if isnan and len(users) == 2:
        where = [u for u in users if u.op_type == "Where"]
        if len(where) == 1 and where[0].inputs[0] is isnan[0].outputs[0] and where[0].inputs[2] is probs:
            fill = const_array(where[0].inputs[1])
            if fill is None or np.any(fill != 0):
                raise Reject("the NaN guard after Softmax fills with a non-zero value")
            probs, guard = where[0].outputs[0], True
    user = only_consumer(probs)
    if user is None:
        names = ", ".join(sorted(u.op_type for u in consumers(probs))) or "a graph output"
        raise Reject(f"the attention probabilities are used more than once ({names}), e.g. returned as an output")
    if user.op_type != "MatMul" or user.inputs[0] is not probs:
        raise Reject(f"the attention probabilities feed {user.op_type} ({user.name}), not MatMul(P, V)")
    return user, guard


def match_attention(softmax: ir.Node, opset: int) -> AttentionMatch:
    if opset < 13:
        raise Reject("Softmax before opset 13 normalises over flattened axes")
    rank_dims = static_dims(softmax.inputs[0])
    axis = attr(softmax, "axis", -1)
    if rank_dims is not None and axis not in (-1, len(rank_dims) - 1):
        raise Reject(f"Softmax over axis {axis}, not the key axis (last)")
    if rank_dims is None and axis != -1:
        raise Reject(f"Softmax over axis {axis} of a tensor of unknown rank")
    pv, guard = _find_pv(softmax)
    match = AttentionMatch(softmax, None, None, pv.inputs[1], pv.outputs[0], 1.0, guard=guard)  # type: ignore[arg-type]
    qk = _walk_scores(softmax.inputs[0], match).producer()
    q, fq = _strip_scalar(qk.inputs[0])
    k_t, fk = _strip_scalar(qk.inputs[1])
    match.q, match.k_t, match.scale = q, k_t, match.scale * fq * fk
    for name, value in (("Q", q), ("Kᵀ", k_t), ("V", match.v)):
        dims = static_dims(value)
        if dims is None:
            raise Reject(f"the rank of {name} is unknown")
        if len(dims) != 4:
            raise Reject(f"{name} has rank {len(dims)}; heads must be split into (batch, heads, seq, size)")
    return match


def _k_from_k_t(graph: ir.Graph, before: ir.Node, k_t: ir.Value) -> ir.Value:
    """K is Kᵀ with its last two axes swapped back; reuse the exporter's own tensor where it is plain."""
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
    """Grouped-query attention repeats K/V heads (Unsqueeze, Expand, Reshape; or Tile); return the
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


def _combined_mask(graph: ir.Graph, before: ir.Node, match: AttentionMatch) -> ir.Value | None:
    keep: ir.Value | None = None
    for cond, keep_where_true in match.keep_masks:
        c = cond if keep_where_true else new_node(graph, before, "Not", [cond], name="mask_not").outputs[0]
        keep = c if keep is None else new_node(graph, before, "And", [keep, c], name="mask_and").outputs[0]
    additive: ir.Value | None = None
    for mask, factor in match.float_masks:
        term = mask
        if factor != 1.0:
            scale = add_constant(graph, np.array(factor, dtype=np.float32), f"{before.name}_mask_scale")
            term = new_node(graph, before, "Mul", [mask, scale], name="mask_scale").outputs[0]
        additive = term if additive is None else new_node(graph, before, "Add", [additive, term], name="mask_add").outputs[0]
    if additive is None:
        return keep
    if keep is not None:  # mixed: turn the keep-mask into an additive one
        zero = add_constant(graph, np.array(0.0, dtype=np.float32), f"{before.name}_mask_zero")
        fill = add_constant(graph, np.array(np.finfo(np.float32).min, dtype=np.float32), f"{before.name}_mask_fill")
        as_float = new_node(graph, before, "Where", [keep, zero, fill], name="mask_where").outputs[0]
        additive = new_node(graph, before, "Add", [additive, as_float], name="mask_add").outputs[0]
    return additive


def fuse_matched(graph: ir.Graph, match: AttentionMatch) -> ir.Node:
    """Replace the matched block with one attnopt.Attention node producing the same tensor."""
    pv = match.out.producer()
    k = _k_from_k_t(graph, pv, match.k_t)
    k, kv_heads_k = _strip_kv_repeat(k)
    v, kv_heads_v = _strip_kv_repeat(match.v)
    if kv_heads_k != kv_heads_v:  # only strip when both K and V are provably repeated alike
        k = _k_from_k_t(graph, pv, match.k_t) if kv_heads_k else k
        v = match.v
    q_dims = static_dims(match.q) or [None] * 4
    kv_dims = static_dims(v) or [None] * 4
    mask = _combined_mask(graph, pv, match)
    inputs = [match.q, k, v] + ([mask] if mask is not None else [])
    node = new_node(graph, pv, "Attention", inputs, {
        "scale": float(match.scale),
        "q_num_heads": int(q_dims[1] or 0),
        "kv_num_heads": int(kv_dims[1] or 0),
        "head_size": int(q_dims[3] or 0),
        "v_head_size": int(kv_dims[3] or 0),
        # dtypes of intermediate values are often unknown (TorchScript exports): say which mask this is
        "mask_is_bool": int(mask is not None and not match.float_masks),
    }, domain=ATTNOPT_DOMAIN, name="attention")
    replace_value(match.out, node.outputs[0])
    return node


def recognise_onnx_attention(node: ir.Node) -> None:
    """An ONNX Attention op (opset 23) is already a recognised site; take it into the canonical form
    when its inputs are plain 4-D and it uses no cache, softcap or causal flag."""
    if len(node.inputs) > 4 or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
        raise Reject("ONNX Attention with a KV cache or extra outputs is kept as it is")
    if attr(node, "softcap", 0.0) or attr(node, "is_causal", 0) or attr(node, "qk_matmul_output_mode", 0):
        raise Reject("ONNX Attention with softcap, is_causal or qk output mode is kept as it is")
    q_dims = static_dims(node.inputs[0])
    if q_dims is None or len(q_dims) != 4:
        raise Reject("ONNX Attention with 3-D inputs is kept as it is")
    scale = attr(node, "scale", None)
    if scale is None:
        if not q_dims[3]:
            raise Reject("ONNX Attention without a scale and with a dynamic head size")
        scale = 1.0 / float(np.sqrt(q_dims[3]))
    kv_dims = static_dims(node.inputs[2]) or [None] * 4
    node.domain, node.op_type = ATTNOPT_DOMAIN, "Attention"
    node.attributes.clear()
    for name, value in (("scale", float(scale)), ("q_num_heads", int(q_dims[1] or 0)),
                        ("kv_num_heads", int(kv_dims[1] or 0)), ("head_size", int(q_dims[3] or 0)),
                        ("v_head_size", int(kv_dims[3] or 0)),
                        ("mask_is_bool", int(len(node.inputs) > 3 and node.inputs[3] is not None
                                             and node.inputs[3].dtype == ir.DataType.BOOL))):
        node.attributes[name] = ir.convenience.convert_attribute(name, value)


def recognise_attention(model: ir.Model, opset: int) -> FusionOutcome:
    outcome = FusionOutcome("attention")
    graph = model.graph
    for node in list(graph):
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            outcome.sites += 1
            outcome.already_fused += 1
            try:
                recognise_onnx_attention(node)
                outcome.fused += 1
            except Reject as why:
                outcome.reject(node.name or "Attention", str(why))
    for softmax in [n for n in graph if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]:
        outcome.sites += 1
        try:
            match = match_attention(softmax, opset)
        except Reject as why:
            outcome.reject(softmax.name or "Softmax", str(why))
            continue
        fuse_matched(graph, match)
        outcome.fused += 1
    return outcome
