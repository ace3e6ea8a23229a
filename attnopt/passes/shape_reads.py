"""Shape reads moved upstream: `Shape(x)` computed from what x is made of, so that a tensor read only for its
shape stops keeping its producers alive. After a fusion, TorchScript exports leave the old Q and V
projections (MatMul -> Reshape -> Transpose) alive for nothing but a Shape reader each: two GEMMs a layer
computed for their sizes. Each rule here is exact for the op it names; the Reshape rule's resolved -1 comes
from the static shape reasoning the recognisers use, and every rewrite is verified with the rest."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, const_array, new_node, replace_value
from attnopt.passes.shapes import shape_pieces, static_dims

#: ops whose output has the shape of their only (first) input
_SAME_SHAPE = {"Identity", "Cast", "Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Sqrt", "Exp", "Log", "Erf", "Softmax",
               "Reciprocal", "Not"}


def move_shape_reads(model: ir.Model) -> int:
    """Rewrites every Shape node whose input's producer a rule covers, until none does; returns how many."""
    graph, moved = model.graph, 0
    changed = True
    while changed:
        changed = False
        for node in list(graph):
            if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.graph is not None \
                    and _move(graph, node):
                moved += 1
                changed = True
    return moved


def _move(graph: ir.Graph, node: ir.Node) -> bool:
    """One Shape node read from its input's producer's inputs, where a rule covers that producer."""
    x = node.inputs[0]
    source = x.producer() if x is not None else None
    if source is None or source.domain not in ("", "ai.onnx") or x is not source.outputs[0] \
            or source.inputs[0] is None:
        return False
    if source.op_type in _SAME_SHAPE:
        node.replace_input_with(0, source.inputs[0])
        return True
    if source.op_type == "Transpose":
        perm = attr(source, "perm")
        if perm is None:
            return False
        start, end = _bounds(node, len(perm))
        whole = new_node(graph, node, "Shape", [source.inputs[0]], name="moved").outputs[0]
        shape = new_node(graph, node, "Gather", [whole, _ints(graph, node, list(perm)[start:end], "perm")],
                         {"axis": 0}, name="moved_perm").outputs[0]
        return _replace(graph, node, shape)
    if source.op_type == "MatMul":
        weight = const_array(source.inputs[1])
        dims = static_dims(source.inputs[0])
        if weight is None or weight.ndim != 2 or dims is None or len(dims) < 2:
            return False
        lead = new_node(graph, node, "Shape", [source.inputs[0]], {"end": -1}, name="moved").outputs[0]
        shape = new_node(graph, node, "Concat", [lead, _ints(graph, node, [weight.shape[1]], "columns")],
                         {"axis": 0}, name="moved_columns").outputs[0]
        return _replace(graph, node, _sliced(graph, node, shape, len(dims)))
    if source.op_type == "Reshape":
        shape = _reshape_target(graph, node, source)
        return shape is not None and _replace(graph, node, _sliced(graph, node, shape, len(shape_pieces(source.inputs[1]))))
    return False


def _reshape_target(graph: ir.Graph, node: ir.Node, reshape: ir.Node) -> ir.Value | None:
    """Reshape(y, s) has shape s where s asks for no copied axis (0); a -1 in it is replaced by the size the
    static reasoning resolves for that axis, or the rule does not apply."""
    pieces = shape_pieces(reshape.inputs[1])
    if pieces is None or attr(reshape, "allowzero", 0) or 0 in pieces or pieces.count(-1) > 1:
        return None
    if -1 not in pieces:
        return reshape.inputs[1]
    at = pieces.index(-1)
    dims = static_dims(reshape.outputs[0])
    size = dims[at] if dims is not None and len(dims) == len(pieces) else None
    if size is None:
        return None
    return new_node(graph, node, "ScatterElements", [reshape.inputs[1], _ints(graph, node, [at], "unknown_axis"),
                                                     _ints(graph, node, [size], "resolved")],
                    {"axis": 0}, name="moved_resolved").outputs[0]


def _sliced(graph: ir.Graph, node: ir.Node, shape: ir.Value, rank: int) -> ir.Value:
    start, end = _bounds(node, rank)
    if (start, end) == (0, rank):
        return shape
    return new_node(graph, node, "Slice", [shape, _ints(graph, node, [start], "start"), _ints(graph, node, [end], "end")],
                    name="moved_slice").outputs[0]


def _replace(graph: ir.Graph, node: ir.Node, shape: ir.Value) -> bool:
    replace_value(node.outputs[0], shape)
    graph.remove(node, safe=True)
    return True


def _bounds(node: ir.Node, rank: int) -> tuple[int, int]:
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
    return max(0, min(start, rank)), max(0, min(end, rank))


def _ints(graph: ir.Graph, node: ir.Node, values: list[int], name: str) -> ir.Value:
    return add_constant(graph, np.array(values, dtype=np.int64), f"{node.name}_{name}")
