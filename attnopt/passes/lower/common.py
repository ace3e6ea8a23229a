"""Pieces more than one lowering needs: the standard ONNX forms of the norms, GELU and rotary, the
decomposed attention, float masks, repeated K/V heads."""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, keep_as_bias, key_count_of, new_node, replace_value
from attnopt.passes.shapes import static_dims

Fused = tuple[str, ir.Node]


#: masks at or below this are "masked" to every kernel; -inf itself makes a fully masked row NaN
#: (0/0) in the fused kernels, where the model's own NaN guard wrote zeros
MASK_FLOOR = -1e30


Built = TypeVar("Built")


def shared(graph: ir.Graph, key: tuple, build: Callable[[], Built]) -> Built:
    """What every fused op of the graph can read (the floored mask, the cache's lengths, rotary tables):
    built once, before the first op that asks for it, which precedes the later ones in graph order."""
    memo: dict[tuple, Built] = graph.meta.setdefault("attnopt.shared", {})
    if key not in memo:
        memo[key] = build()
    return memo[key]


def float_bias(graph: ir.Graph, before: ir.Node, mask: ir.Value) -> ir.Value:
    """The canonical op's mask as an additive float bias no lower than MASK_FLOOR: a keep-mask (bool) as
    0 / finfo.min, a float mask floored (exp() of either is exactly 0 beside any kept key)."""
    if attr(before, "mask_is_bool", 0):
        return shared(graph, ("bias", id(mask)), lambda: keep_as_bias(graph, before, mask))

    def floored() -> ir.Value:
        floor = add_constant(graph, np.array(MASK_FLOOR, dtype=np.float32), f"{before.name}_mask_floor")
        return new_node(graph, before, "Max", [mask, floor], name="mask_floor").outputs[0]

    return shared(graph, ("floor", id(mask)), floored)


def cache_inputs(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """(past_key, past_value) of a cache-aware canonical attention, else None."""
    if len(node.inputs) > 5 and node.inputs[4] is not None and node.inputs[5] is not None:
        return node.inputs[4], node.inputs[5]
    return None


def cache_axis_key(past: ir.Value, axis: int) -> tuple:
    """What makes an axis of a past input the same as other layers': its symbolic name where the graph
    declares one (every layer's past is `past_sequence_length` long), else the input itself."""
    dim = past.shape[axis] if past.shape is not None and len(past.shape) > axis else None
    name = getattr(dim, "value", None)
    return ("dim", axis, name) if isinstance(name, str) and name else ("value", axis, id(past))


def key_count(graph: ir.Graph, node: ir.Node, new_keys: ir.Value | None = None, new_axis: int = 2) -> ir.Value:
    """How many keys the canonical attention attends over, as a 1-element int64: past + new with a cache.
    `new_keys`: a tensor as long as K on `new_axis` to read it from, where K itself is about to go."""
    past = cache_inputs(node)

    def build() -> ir.Value:
        return key_count_of(graph, node, past[0] if past is not None else None,
                            new_keys if new_keys is not None else node.inputs[1], new_axis)

    # every layer whose past is declared as long as another's attends over as many keys
    return shared(graph, ("keys", cache_axis_key(past[0], 2)), build) if past is not None else build()


def concatenate_cache(graph: ir.Graph, node: ir.Node) -> ir.Node:
    """A cache-aware canonical attention as the plain one over Concat(past, new), for the forms that
    take no cache: the Concats become the present outputs."""
    past = cache_inputs(node)
    if past is None:
        return node
    k, v = (new_node(graph, node, "Concat", [cached, new], {"axis": 2}, name=f"present_{n}").outputs[0]
            for cached, new, n in ((past[0], node.inputs[1], "key"), (past[1], node.inputs[2], "value")))
    replace_value(node.outputs[1], k)
    replace_value(node.outputs[2], v)
    inputs = [node.inputs[0], k, v, node.inputs[3]]
    while inputs[-1] is None:
        inputs.pop()
    plain = new_node(graph, node, node.op_type, inputs, {a.name: a.value for a in node.attributes.values()},
                     domain=node.domain, name="attention")
    plain.meta.update(node.meta)
    replace_output(node, plain.outputs[0])
    return plain


def _same_axis(a: ir.Value, i: int, b: ir.Value, j: int) -> bool:
    """Axis i of a and axis j of b are the same named symbolic dimension (or the same size > 1)."""
    if a.shape is None or b.shape is None or len(a.shape) <= i or len(b.shape) <= j:
        return False
    x, y = a.shape[i], b.shape[j]
    if isinstance(x, int) or isinstance(y, int):
        return isinstance(x, int) and isinstance(y, int) and x == y and x > 1
    return bool(x.value) and x.value == y.value


def full_mask(graph: ir.Graph, node: ir.Node, mask: ir.Value, q: ir.Value, k: ir.Value, seq_axis: int = 2,
              keys: ir.Value | None = None) -> ir.Value:
    """The mask broadcast to 4-D (B or 1, H or 1, Sq, Sk): ONNX Runtime's attention kernels
    (MultiHeadAttention, GroupQueryAttention, ONNX Attention on CPU) do not broadcast the two sequence
    axes. Sq and Sk are read off q and k at `seq_axis` (2 for (B, H, S, D) tensors, 1 for (B, S, hidden));
    `keys` (a 1-element int64) gives Sk instead where k holds only the new keys of a cache."""
    dims = static_dims(mask)
    if dims is not None and len(dims) < 4:
        axes = add_constant(graph, np.arange(4 - len(dims), dtype=np.int64), f"{node.name}_mask_axes")
        mask = new_node(graph, node, "Unsqueeze", [mask, axes], name="mask_4d").outputs[0]
        dims = [1] * (4 - len(dims)) + dims
    if dims is not None and all(isinstance(d, int) and d > 1 for d in dims[2:]):
        return mask
    if keys is None and _same_axis(mask, 2, q, seq_axis) and _same_axis(mask, 3, k, seq_axis):
        return mask  # symbolically (.., Sq, Sk) already, as the masks transformers builds are

    def expanded() -> ir.Value:
        sq = new_node(graph, node, "Shape", [q], {"start": seq_axis, "end": seq_axis + 1}, name="sq").outputs[0]
        sk = keys if keys is not None else \
            new_node(graph, node, "Shape", [k], {"start": seq_axis, "end": seq_axis + 1}, name="sk").outputs[0]
        ones = add_constant(graph, np.array([1, 1], dtype=np.int64), f"{node.name}_mask_ones")
        target = new_node(graph, node, "Concat", [ones, sq, sk], {"axis": 0}, name="mask_shape").outputs[0]
        return new_node(graph, node, "Expand", [mask, target], name="mask_full").outputs[0]

    # every layer's queries and keys have the same lengths only with a cache (keys given): share it then
    return shared(graph, ("full", id(mask), id(keys)), expanded) if keys is not None else expanded()


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


def decomposed_attention(graph: ir.Graph, node: ir.Node) -> tuple[ir.Node, ir.Value]:
    """softmax((Q * scale) Kᵀ + bias) V in plain ONNX, with the scale on Q before the first MatMul:
    the form TensorRT's fused multi-head attention recognises; a soft-cap c * tanh(scores / c) before the
    bias where the op has one. Returns (the Softmax, the output)."""
    q = node.inputs[0]
    k, v = kv_for_all_heads(graph, node)
    scale = add_constant(graph, np.array(attr(node, "scale", 1.0), dtype=np.float32), f"{node.name}_scale")
    q = new_node(graph, node, "Mul", [q, scale], name="q_scaled").outputs[0]
    k_t = new_node(graph, node, "Transpose", [k], {"perm": [0, 1, 3, 2]}, name="k_t").outputs[0]
    scores = new_node(graph, node, "MatMul", [q, k_t], name="scores").outputs[0]
    cap = float(attr(node, "softcap", 0.0))
    if cap:
        shrink = add_constant(graph, np.array(1.0 / cap, dtype=np.float32), f"{node.name}_softcap_shrink")
        grow = add_constant(graph, np.array(cap, dtype=np.float32), f"{node.name}_softcap")
        scores = new_node(graph, node, "Mul", [scores, shrink], name="softcap_in").outputs[0]
        scores = new_node(graph, node, "Tanh", [scores], name="softcap_tanh").outputs[0]
        scores = new_node(graph, node, "Mul", [scores, grow], name="softcap").outputs[0]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None:
        scores = new_node(graph, node, "Add", [scores, float_bias(graph, node, mask)], name="masked").outputs[0]
    softmax = new_node(graph, node, "Softmax", [scores], {"axis": -1}, name="probs")
    return softmax, new_node(graph, node, "MatMul", [softmax.outputs[0], v], name="context").outputs[0]


def replace_output(node: ir.Node, value: ir.Value) -> None:
    out = node.outputs[0]
    replace_value(out, value)
    node.graph.remove(node, safe=True)


def _rewrite(model: ir.Model, node: ir.Node, op_type: str, inputs: list[ir.Value | None],
             attributes: dict, name: str, domain: str = "") -> ir.Node:
    fused = new_node(model.graph, node, op_type, inputs, attributes, domain=domain, name=name)
    replace_output(node, fused.outputs[0])
    return fused


def standard_layernorm(model: ir.Model, node: ir.Node) -> Fused:
    fused = _rewrite(model, node, "LayerNormalization", list(node.inputs),
                     {"axis": -1, "epsilon": attr(node, "epsilon", 1e-5)}, "layernorm")
    return "LayerNormalization", fused


def standard_rmsnorm(model: ir.Model, node: ir.Node) -> Fused:
    fused = _rewrite(model, node, "RMSNormalization", list(node.inputs),
                     {"axis": -1, "epsilon": attr(node, "epsilon", 1e-5)}, "rmsnorm")
    return "RMSNormalization", fused


def standard_gelu(model: ir.Model, node: ir.Node) -> Fused:
    fused = _rewrite(model, node, "Gelu", [node.inputs[0]], {"approximate": attr(node, "approximate", "none")}, "gelu")
    return "Gelu", fused


def half_cache(graph: ir.Graph, before: ir.Node, table: ir.Value, half: int, name: str) -> ir.Value:
    """A (B', 1, S, D) cos or sin table with duplicated halves (the recogniser proved it) -> (B', S, D/2)."""
    one = add_constant(graph, np.array([1], dtype=np.int64), f"{before.name}_axis1")
    squeezed = new_node(graph, before, "Squeeze", [table, one], name=f"{name}_3d").outputs[0]
    start = add_constant(graph, np.array([0], dtype=np.int64), f"{before.name}_zero")
    end = add_constant(graph, np.array([half], dtype=np.int64), f"{before.name}_half")
    last = add_constant(graph, np.array([-1], dtype=np.int64), f"{before.name}_last")
    return new_node(graph, before, "Slice", [squeezed, start, end, last], name=f"{name}_half").outputs[0]


def standard_rotary(model: ir.Model, node: ir.Node) -> Fused:
    """ONNX RotaryEmbedding (opset 23) without position ids takes (B, S, D/2) caches with x's batch."""
    graph = model.graph
    x, cos, sin = node.inputs
    half = attr(node, "rotary_dim", 0) // 2
    batch = new_node(graph, node, "Shape", [x], {"start": 0, "end": 1}, name="batch").outputs[0]
    ones = add_constant(graph, np.array([1, 1], dtype=np.int64), f"{node.name}_ones")
    grow = new_node(graph, node, "Concat", [batch, ones], {"axis": 0}, name="cache_shape").outputs[0]
    caches = [new_node(graph, node, "Expand", [half_cache(graph, node, t, half, n), grow], name=f"{n}_b").outputs[0]
              for t, n in ((cos, "cos"), (sin, "sin"))]
    return "RotaryEmbedding", _rewrite(model, node, "RotaryEmbedding", [x, *caches], {}, "rotary")
