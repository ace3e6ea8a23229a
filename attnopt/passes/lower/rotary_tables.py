"""Rotary cos and sin as tables by position. Where a model computes its cos and sin from one integer
input (position_ids) and constants alone, ONNX Runtime's rotary kernels can look the rows up by position
id in tables computed once here, instead of the model building them at every step. The model's own ops
compute the tables, and running them again on scrambled positions of another shape must give exactly
the tables' rows: so the function is shown to be one of the position alone, whatever form the exporter
wrote (inv_freq times positions as Mul, MatMul or Einsum, attention scaling, llama3 frequency bands)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant
from attnopt.passes.lower.own_nodes import run_alone

#: ops that compute per element or move shapes: a graph of these over one input cannot mix positions
#: except by reshaping, which the scrambled-position check below catches
_POSITIONWISE = {"Unsqueeze", "Squeeze", "Cast", "CastLike", "Mul", "Div", "Add", "Sub", "Neg", "Pow", "Sqrt",
                 "Reciprocal", "Cos", "Sin", "Concat", "MatMul", "Einsum", "Transpose", "Expand", "Shape", "Gather",
                 "Reshape", "Slice", "Identity", "Constant", "ConstantOfShape", "Where", "Equal", "Less", "Greater",
                 "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not", "Clip", "Max", "Min", "Floor", "Ceil"}


def _sources(targets: list[ir.Value]) -> tuple[list[ir.Node], list[ir.Value]] | None:
    """The nodes computing `targets` and the graph inputs they read, when every node is position-wise."""
    nodes: dict[int, ir.Node] = {}
    inputs: dict[int, ir.Value] = {}
    stack = list(targets)
    while stack:
        value = stack.pop()
        if value.const_value is not None:
            continue
        node = value.producer()
        if node is None:
            inputs[id(value)] = value
            continue
        if id(node) in nodes:
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in _POSITIONWISE:
            return None
        nodes[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    return list(nodes.values()), list(inputs.values())


def position_tables(model: ir.Model, cos: ir.Value, sin: ir.Value, rotary_dim: int, rows: int
                    ) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """(cos_cache, sin_cache, position_ids) for ONNX Runtime's rotary kernels: (rows, rotary_dim / 2)
    constant tables and the model's own position input, or None where cos and sin are not a function of
    one integer input's values alone (or their halves differ: the rotate-half form repeats them)."""
    found = _sources([cos, sin])
    if found is None or len(found[1]) != 1:
        return None
    nodes, (position,) = found
    if position.dtype != ir.DataType.INT64 or position.shape is None or len(position.shape) != 2:
        return None
    half = rotary_dim // 2
    try:
        scrambled = np.random.default_rng(0).integers(0, rows, size=(2, 7), dtype=np.int64)
        in_order, shuffled = run_alone(model, nodes, [position], [cos, sin],
                                       [[np.arange(rows, dtype=np.int64)[None]], [scrambled]])
        tables = [t.reshape(rows, -1) for t in in_order]
        again = [t.reshape(scrambled.size, -1) for t in shuffled]
    except Exception:  # noqa: BLE001 - a form these ops cannot run alone: keep the model's own computation
        return None
    for table, check in zip(tables, again):
        # ulp-close, not equal: ONNX Runtime's vectorised Cos and Sin round the tail of a row differently
        if table.shape[1] != rotary_dim or not np.allclose(table[:, :half], table[:, half:], rtol=0, atol=1e-6) \
                or not np.allclose(table[scrambled.reshape(-1)], check, rtol=0, atol=1e-6):
            return None
    graph = model.graph
    caches = [add_constant(graph, np.ascontiguousarray(t[:, :half]), f"rotary_{n}_by_position")  # the model's dtype
              for t, n in zip(tables, ("cos", "sin"))]
    return caches[0], caches[1], position
