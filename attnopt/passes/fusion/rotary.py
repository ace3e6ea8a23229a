"""Rotary position embedding, rotate-half form: x * cos + concat(-x2, x1) * sin, where x1 and x2 are
the halves of x's last axis -> RotaryEmbedding (ONNX opset 23, or ONNX Runtime's contrib op).

cos and sin are whatever the model computed, (B or 1, 1, S, D) with duplicated halves as in
Hugging Face models; the fused op takes their first halves as its caches."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.match import other_input
from attnopt.passes.fusion.sites import FusionOutcome, Reject
from attnopt.passes.graph_utils import (MS_DOMAIN, add_constant, attr, const_array, ensure_opset, new_node,
                                        only_consumer, producer, replace_value)
from attnopt.passes.shapes import static_dims, static_ints


def _slice_bounds(node: ir.Node) -> tuple[ir.Value, int, int] | None:
    """(input, start, end) of a Slice on the last axis with step 1 and statically known bounds."""
    if len(node.inputs) < 3:
        return None
    starts, ends = static_ints(node.inputs[1]), static_ints(node.inputs[2])
    axes = static_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.array([-1])
    steps = static_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.array([1])
    if starts is None or ends is None or axes is None or steps is None or starts.size != 1 or steps.reshape(-1)[0] != 1:
        return None
    dims = static_dims(node.inputs[0])
    axis = int(axes.reshape(-1)[0])
    if dims is None or axis not in (-1, len(dims) - 1):
        return None
    return node.inputs[0], int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])


def is_rotate_half(concat: ir.Node) -> bool:
    return (concat.op_type == "Concat" and len(concat.inputs) == 2 and producer(concat.inputs[0], "Neg") is not None
            and producer(concat.inputs[1], "Slice") is not None)


def match_rotary(concat: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """From the rotate-half Concat: (x, cos, sin, output)."""
    dims = None
    neg = producer(concat.inputs[0], "Neg")
    upper, lower = producer(neg.inputs[0], "Slice"), producer(concat.inputs[1], "Slice")
    hi, lo = (_slice_bounds(upper) if upper else None), (_slice_bounds(lower) if lower else None)
    if hi is None or lo is None or hi[0] is not lo[0]:
        raise Reject("the halves are not constant slices of one tensor's last axis")
    x = hi[0]
    dims = static_dims(x)
    if dims is None or len(dims) != 4 or not dims[3]:
        raise Reject("x is not 4-D (batch, heads, seq, head size) with a static head size")
    half = dims[3] // 2
    if (lo[1], lo[2]) != (0, half) or hi[1] != half or hi[2] < dims[3]:
        raise Reject(f"the slices do not split the head size {dims[3]} into halves")
    if attr(concat, "axis", 0) not in (-1, 3):
        raise Reject("the halves are not concatenated on the last axis")
    sin_mul = only_consumer(concat.outputs[0])
    if sin_mul is None or sin_mul.op_type != "Mul":
        raise Reject("rotate_half(x) is not multiplied by sin")
    sin = other_input(sin_mul, concat.outputs[0])
    add = only_consumer(sin_mul.outputs[0])
    if add is None or add.op_type != "Add":
        raise Reject("rotate_half(x) * sin is not added to x * cos")
    cos_mul = producer(other_input(add, sin_mul.outputs[0]), "Mul")
    if cos_mul is None or x not in cos_mul.inputs:
        raise Reject("the other term is not x * cos")
    cos = other_input(cos_mul, x)
    if not (has_duplicated_halves(cos) and has_duplicated_halves(sin)):
        raise Reject("cannot prove that cos and sin repeat their first half (cat(freqs, freqs))")
    return x, cos, sin, add.outputs[0]


def has_duplicated_halves(table: ir.Value, depth: int = 0) -> bool:
    """True when the table is provably cat(f, f) on its last axis, through cos/sin, scalings, casts and
    unsqueezes: that is what lets the fused op keep only the first half."""
    node = producer(table)
    if node is None or depth > 8:
        return False
    if node.op_type == "Concat":
        dims = static_dims(table)
        last = attr(node, "axis", 0) == -1 or (dims is not None and attr(node, "axis", 0) == len(dims) - 1)
        return len(node.inputs) == 2 and node.inputs[0] is node.inputs[1] and last
    if node.op_type in ("Cos", "Sin", "Cast", "Unsqueeze", "Identity"):
        return has_duplicated_halves(node.inputs[0], depth + 1)
    if node.op_type == "Mul":
        a, b = node.inputs
        if const_array(b) is not None and const_array(b).size == 1:
            return has_duplicated_halves(a, depth + 1)
        if const_array(a) is not None and const_array(a).size == 1:
            return has_duplicated_halves(b, depth + 1)
    return False


def _half_cache(graph: ir.Graph, before: ir.Node, table: ir.Value, half: int, name: str) -> ir.Value:
    """(B', 1, S, D) with duplicated halves -> (B', S, D/2)."""
    one = add_constant(graph, np.array([1], dtype=np.int64), f"{before.name}_axis1")
    squeezed = new_node(graph, before, "Squeeze", [table, one], name=f"{name}_3d").outputs[0]
    start = add_constant(graph, np.array([0], dtype=np.int64), f"{before.name}_zero")
    end = add_constant(graph, np.array([half], dtype=np.int64), f"{before.name}_half")
    last = add_constant(graph, np.array([-1], dtype=np.int64), f"{before.name}_last")
    return new_node(graph, before, "Slice", [squeezed, start, end, last], name=f"{name}_half").outputs[0]


def _emit_onnx(graph: ir.Graph, before: ir.Node, x: ir.Value, cos: ir.Value, sin: ir.Value) -> ir.Value:
    """ONNX RotaryEmbedding without position ids takes (B, S, D/2) caches with x's batch."""
    half = static_dims(x)[3] // 2
    batch = new_node(graph, before, "Shape", [x], {"start": 0, "end": 1}, name="batch").outputs[0]
    ones = add_constant(graph, np.array([1, 1], dtype=np.int64), f"{before.name}_ones")
    grow = new_node(graph, before, "Concat", [batch, ones], {"axis": 0}, name="cache_shape").outputs[0]
    caches = [new_node(graph, before, "Expand", [_half_cache(graph, before, t, half, n), grow], name=f"{n}_b").outputs[0]
              for t, n in ((cos, "cos"), (sin, "sin"))]
    return new_node(graph, before, "RotaryEmbedding", [x, *caches], name="rotary").outputs[0]


def _emit_ort(model: ir.Model, before: ir.Node, x: ir.Value, cos: ir.Value, sin: ir.Value) -> ir.Value:
    """ONNX Runtime's RotaryEmbedding looks caches up by position id: flatten the (B', S) rows of the
    caches and give each token the index of its own row."""
    graph = model.graph
    ensure_opset(model, MS_DOMAIN, 1)
    half = static_dims(x)[3] // 2
    flat = add_constant(graph, np.array([-1, half], dtype=np.int64), f"{before.name}_flat")
    caches = [new_node(graph, before, "Reshape", [_half_cache(graph, before, t, half, n), flat], name=f"{n}_2d").outputs[0]
              for t, n in ((cos, "cos"), (sin, "sin"))]
    rows = new_node(graph, before, "Shape", [caches[0]], {"start": 0, "end": 1}, name="rows").outputs[0]
    zero = add_constant(graph, np.array(0, dtype=np.int64), f"{before.name}_i0")
    step = add_constant(graph, np.array(1, dtype=np.int64), f"{before.name}_i1")
    first = add_constant(graph, np.array([0], dtype=np.int64), f"{before.name}_squeeze0")
    count = new_node(graph, before, "Squeeze", [rows, first], name="rows_scalar").outputs[0]
    ids = new_node(graph, before, "Range", [zero, count, step], name="ids").outputs[0]
    table_rows = new_node(graph, before, "Shape", [cos], {"start": 0, "end": 1}, name="cache_batch").outputs[0]
    minus = add_constant(graph, np.array([-1], dtype=np.int64), f"{before.name}_minus1")
    by_row = new_node(graph, before, "Concat", [table_rows, minus], {"axis": 0}, name="ids_shape").outputs[0]
    ids = new_node(graph, before, "Reshape", [ids, by_row], name="ids_2d").outputs[0]
    xb = new_node(graph, before, "Shape", [x], {"start": 0, "end": 1}, name="x_batch").outputs[0]
    one = add_constant(graph, np.array([1], dtype=np.int64), f"{before.name}_one")
    target = new_node(graph, before, "Concat", [xb, one], {"axis": 0}, name="pos_shape").outputs[0]
    positions = new_node(graph, before, "Expand", [ids, target], name="position_ids").outputs[0]
    return new_node(graph, before, "RotaryEmbedding", [x, positions, *caches], domain=MS_DOMAIN,
                    name="rotary").outputs[0]


def fuse_rotary(model: ir.Model, target: str, opset: int) -> FusionOutcome:
    outcome = FusionOutcome("rotary")
    graph = model.graph
    for node in [n for n in graph if n.op_type == "RotaryEmbedding"]:
        outcome.sites += 1
        outcome.fused += 1
        outcome.already_fused += 1
    for concat in [n for n in graph if n.domain in ("", "ai.onnx") and is_rotate_half(n)]:
        outcome.sites += 1
        try:
            x, cos, sin, out = match_rotary(concat)
            if target != "ort" and opset < 23:
                raise Reject(f"RotaryEmbedding needs opset 23 (the model has {opset}); re-export with --opset 23")
            before = out.producer()
            fused = _emit_ort(model, before, x, cos, sin) if target == "ort" else _emit_onnx(graph, before, x, cos, sin)
        except Reject as why:
            outcome.reject(concat.name, str(why))
            continue
        replace_value(out, fused)
        outcome.fused += 1
        form = "RotaryEmbedding (contrib)" if target == "ort" else "RotaryEmbedding"
        outcome.forms[form] = outcome.forms.get(form, 0) + 1
    return outcome


