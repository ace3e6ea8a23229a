"""Shape reads of a reshaped tensor, read off the sizes it was reshaped to instead. TorchScript exports read
Q's and V's heads for their sizes (Shape(Transpose(Reshape(q_proj, [b, s, -1, d]))) for the output's reshape,
the cache's shape); once attention is fused those reads are all that is left of them, and they keep two dead
projection MatMuls a layer running. Read from the Reshape's own target, the projections die with the reads."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.graph_utils import attr, const_array, new_node, replace_value
from attnopt.passes.shapes import named_axes, shape_range, shape_signature, static_dims

#: ops that pass a size through (or combine sizes into one): a value built from Shape with them is a size
_SIZE_PRESERVING = {"Unsqueeze", "Squeeze", "Cast", "Reshape", "Identity", "Gather", "Slice", "Concat", "Add",
                    "Mul", "Max"}


def reroute_shape_reads(model: ir.Model) -> int:
    """Every Shape of a (transposed) Reshape whose target is a Concat of sizes now reads those sizes; how many."""
    graph, count = model.graph, 0
    for node in list(graph):
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.outputs[0].is_graph_output():
            continue
        sizes = _reshaped_sizes(node.inputs[0])
        if sizes is None:
            continue
        rank = len(sizes)
        start, end = shape_range(node, rank)
        chosen = sizes[start:end]
        if chosen and all(size is not None for size in chosen):
            read = chosen[0] if len(chosen) == 1 else \
                new_node(graph, node, "Concat", chosen, {"axis": 0}, name="reshaped_sizes").outputs[0]
            replace_value(node.outputs[0], read)
            count += 1
            continue
        for gather in list(node.outputs[0].consumers()):  # the whole shape, of which single sizes are read
            if gather.graph is not graph:  # read inside a branch or loop body: left as it is
                continue
            count += _reroute_gather(graph, gather, node.outputs[0], chosen)
    return count


def share_equal_shape_reads(model: ir.Model) -> int:
    """Every Shape read of a value whose shape is known (numbers and the graph inputs' named axes) reads the
    first value of that same shape instead (a graph input where one has it); how many. TorchScript reads each
    layer's hidden state for its batch and length: read off one value, the per-layer size arithmetic is the
    same everywhere and common-subexpression elimination leaves one copy of it."""
    graph, count, named = model.graph, 0, named_axes(model.graph)
    first: dict[tuple | None, ir.Value | None] = {None: None}  # an unknown shape matches nothing
    for value in graph.inputs:
        first.setdefault(shape_signature(value, named), value)
    for node in graph:
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            read = first.get(shape_signature(node.inputs[0], named))
            if read is not None and read is not node.inputs[0]:
                node.replace_input_with(0, read)
                count += 1
        for value in node.outputs:  # defined before any later reader, in this sorted graph
            first.setdefault(shape_signature(value, named), value)
    return count


def _reroute_gather(graph: ir.Graph, gather: ir.Node, shape: ir.Value, sizes: list[ir.Value | None]) -> int:
    """Gather(shape, i) with a constant i whose size is known reads that size (a scalar i: squeezed)."""
    if gather.op_type != "Gather" or gather.domain not in ("", "ai.onnx") or gather.inputs[0] is not shape \
            or attr(gather, "axis", 0) != 0 or gather.outputs[0].is_graph_output():
        return 0
    index = const_array(gather.inputs[1])
    if index is None or index.size != 1 or index.ndim > 1:
        return 0
    at = int(index.reshape(-1)[0])
    size = sizes[at] if -len(sizes) <= at < len(sizes) else None
    if size is None:
        return 0
    read = size if index.ndim == 1 else new_node(graph, gather, "Squeeze", [size], name="size").outputs[0]
    replace_value(gather.outputs[0], read)
    return 1


def _reshaped_sizes(value: ir.Value) -> list[ir.Value | None] | None:
    """Per axis of `value` = Transpose*(Reshape(x, Concat(parts))), the 1-element part that holds its size
    (None for an axis whose part is -1 or 0, which Reshape infers or copies); None when value is not such."""
    perms = []
    node = value.producer()
    while node is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        perms.append(attr(node, "perm"))
        node = node.inputs[0].producer()
    if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    target = node.inputs[1].producer() if node.inputs[1] is not None else None
    if target is None or target.op_type != "Concat" or target.domain not in ("", "ai.onnx"):
        return None
    sizes: list[ir.Value | None] = []
    for part in target.inputs:
        if part is None or static_dims(part) != [1]:
            return None  # a part of several axes: leave it
        constant = const_array(part)
        # a size is never -1. It is 0 only on an empty axis, where Reshape (allowzero 0) copies x's axis instead:
        # the one case the read can differ, a tensor with no elements, where nothing reads the values
        sizes.append(part if (constant is not None and int(constant.reshape(-1)[0]) > 0)
                     or (constant is None and _is_size(part)) else None)
    for perm in reversed(perms):  # innermost Transpose first
        perm = perm if perm is not None else list(reversed(range(len(sizes))))
        if sorted(perm) != list(range(len(sizes))):
            return None
        sizes = [sizes[p] for p in perm]
    return sizes


def _is_size(value: ir.Value | None, depth: int = 0) -> bool:
    """Computed from Shape through ops that keep sizes sizes (never negative), or a non-negative constant."""
    if value is None or depth > 8:
        return False
    constant = const_array(value)
    if constant is not None:
        return bool((constant >= 0).all())
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Shape":
        return True
    if node.op_type not in _SIZE_PRESERVING:
        return False
    if node.op_type in ("Concat", "Add", "Mul", "Max"):
        return all(_is_size(i, depth + 1) for i in node.inputs)
    return _is_size(node.inputs[0], depth + 1)  # the data input; indices, axes and targets do not change it
