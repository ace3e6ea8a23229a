"""Reshapes and Transposes that undo each other, after lowering. TorchScript merges attention's heads back as
Reshape(Transpose(Reshape(heads, [B, H, S, D]))) with B and S read off other tensors at run time; the fused
kernel already returns (B, S, H*D), so between it and the output projection five ops move data to where it
was. A Reshape to the shape its input has, a Transpose undone by the next, a Reshape of a Reshape: each goes,
where the shapes are known as numbers and the graph inputs' named axes, and the sizes the target is built
from are read off tensors of such shapes (Shape, Gather, Concat arithmetic)."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.graph_utils import attr, const_array
from attnopt.passes.shapes import Symbol, axis_symbols, named_axes, shape_range, static_dims

def _symbols(value: ir.Value | None, named: set[str], depth: int = 0) -> list[Symbol] | None:
    """The entries of a 0-D or 1-D integer tensor computed from shapes: known numbers, named axes, or
    None per unknown entry; None when even the count is unknown."""
    if value is None or depth > 12:
        return None
    array = const_array(value)
    if array is not None:
        return [int(x) for x in array.reshape(-1)] if array.ndim <= 1 and array.dtype.kind in "iu" else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape":
        dims = axis_symbols(node.inputs[0], named)
        if dims is None:
            return None
        rank = len(dims)
        start, end = shape_range(node, rank)
        return dims[start:end]
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        out = static_dims(node.outputs[0])  # one element, or a vector kept a vector (not made 2-D)
        return _symbols(node.inputs[0], named, depth + 1) if out is not None and len(out) <= 1 else None
    if op == "Concat":  # a part computed otherwise (past + new keys) is unknown sizes, as many as it has
        parts = [_symbols(part, named, depth + 1) or _unknown(part) for part in node.inputs]
        return None if any(p is None for p in parts) else [s for p in parts for s in p]
    if op == "Gather" and attr(node, "axis", 0) == 0:
        source, index = _symbols(node.inputs[0], named, depth + 1), const_array(node.inputs[1])
        if source is None or index is None or index.ndim > 1:
            return None
        picks = [int(i) for i in index.reshape(-1)]
        return [source[i] if -len(source) <= i < len(source) else None for i in picks]
    return None


def _unknown(value: ir.Value | None) -> list[Symbol] | None:
    dims = static_dims(value)
    return [None] * dims[0] if dims is not None and len(dims) == 1 and dims[0] is not None else None


def _keeps_shape(reshape: ir.Node, named: set[str]) -> bool:
    """Reshape(x, target) gives x's own shape: every entry of the target names x's size on that axis (or is
    0, which copies it), but for at most one -1, which is then the one size left."""
    source = axis_symbols(reshape.inputs[0], named) if reshape.inputs[0] is not None else None
    target = _symbols(reshape.inputs[1], named)
    if source is None or target is None or len(target) != len(source):
        return False
    copies = not attr(reshape, "allowzero", 0)  # a 0 copies the axis (with allowzero it is a size of 0)
    unmatched = [i for i, (t, s) in enumerate(zip(target, source))
                 if not ((copies and t == 0) or (t is not None and t == s))]
    return not unmatched or (len(unmatched) == 1 and target[unmatched[0]] == -1)


def _undoes(outer: ir.Node) -> ir.Value | None:
    """The input of Transpose(Transpose(x, p), q) where q undoes p."""
    inner = outer.inputs[0].producer() if outer.inputs[0] is not None else None
    if inner is None or inner.op_type != "Transpose" or inner.domain not in ("", "ai.onnx"):
        return None
    p, q = attr(inner, "perm"), attr(outer, "perm")
    if p is None or q is None or len(p) != len(q):
        return None
    return inner.inputs[0] if [p[i] for i in q] == list(range(len(p))) else None


def _reshape_of_reshape(outer: ir.Node, named: set[str]) -> ir.Value | None:
    """x of Reshape(Reshape(x, a), b), where b copies no axis of the middle shape: allowzero, or no entry of
    b a 0, b built from constants and Shape reads (a size read is 0 only on an empty axis)."""
    inner = outer.inputs[0].producer() if outer.inputs[0] is not None else None
    if inner is None or inner.op_type != "Reshape" or inner.domain not in ("", "ai.onnx"):
        return None
    if attr(outer, "allowzero", 0):
        return inner.inputs[0]
    pieces, middle = _symbols(outer.inputs[1], named), axis_symbols(inner.outputs[0], named)
    if pieces is None or middle is None:
        return None
    # a size read at run time may be 0 (no past yet), and then copies the middle axis: safe where that axis is
    # the very size read
    safe = all((isinstance(p, int) and p != 0) or (p is not None and i < len(middle) and middle[i] == p)
               for i, p in enumerate(pieces))
    return inner.inputs[0] if safe else None


def undo_reshape_chains(model: ir.Model) -> int:
    """Every Reshape that keeps its input's shape, Transpose pair that cancels, and Reshape of a Reshape, taken
    out (readers read the earlier tensor), until none is left; how many."""
    graph, named, count = model.graph, named_axes(model.graph), 0
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or node.outputs[0].is_graph_output() \
                    or not any(True for _ in node.outputs[0].uses()):
                continue  # (a node taken out already reads the same, unread)
            if node.op_type == "Reshape" and _keeps_shape(node, named):
                earlier = node.inputs[0]
            elif node.op_type == "Transpose":
                earlier = _undoes(node)
            elif node.op_type == "Reshape":
                source = _reshape_of_reshape(node, named)
                if source is not None:
                    node.replace_input_with(0, source)
                    count, changed = count + 1, True
                continue
            else:
                continue
            if earlier is not None:  # the earlier tensor keeps its own shape annotation, often the better one
                node.outputs[0].replace_all_uses_with(earlier)
                count, changed = count + 1, True
    return count
