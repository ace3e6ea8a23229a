"""Rotary position embedding, rotate-half form: x * cos + concat(-x2, x1) * sin, where x1 and x2 are
the halves of x's last axis -> attnopt.RotaryEmbedding(x, cos, sin) {rotary_dim}.

cos and sin are whatever the model computed, (B or 1, 1, S, D) with duplicated halves as in Hugging
Face models (proved here), so a lowering may keep only their first halves as its caches."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.match import other_input
from attnopt.passes.fusion.recognition import Recognition
from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import attr, const_array, only_consumer, producer, replace_value
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


def _fuse(ctx: Recognition, site: Site, concat: ir.Node) -> None:
    x, cos, sin, out = match_rotary(concat)
    node = ctx.emit(site, out.producer(), "RotaryEmbedding", [x, cos, sin],
                    {"rotary_dim": int(static_dims(x)[3])}, name="rotary")
    replace_value(out, node.outputs[0])


def _keep(site: Site, node: ir.Node) -> None:
    """A RotaryEmbedding the model already has (ONNX opset 23 or ONNX Runtime's) stays as it is."""
    site.lowered(f"RotaryEmbedding ({node.domain or 'onnx'}, as exported)", node)


def recognise_rotary(ctx: Recognition) -> None:
    graph = ctx.graph
    ctx.each("rotary", [n for n in graph if n.op_type == "RotaryEmbedding"], _keep, already_fused=True)
    ctx.each("rotary", [n for n in graph if n.domain in ("", "ai.onnx") and is_rotate_half(n)],
             lambda site, concat: _fuse(ctx, site, concat))
