"""Tied weights stored twice: an LM head whose constant weight is exactly an embedding table transposed (the
TorchScript exporter folds the tie into a second, pre-transposed copy) reads the table through a Transpose
instead, the form the dynamo exporter writes. One copy on disk (SmolLM2-135M through TorchScript: 28 M weights
fewer), and weight-only quantization sees the tie (materialize_transposed_weights) whatever the exporter."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import attr, const_array, new_node


def embedding_tables(model: ir.Model) -> dict[str, ir.Value]:
    """The constant 2-D fp32 tables that a Gather along axis 0 reads: name -> value."""
    tables = {}
    for node in model.graph:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and (attr(node, "axis", 0) or 0) == 0:
            value = node.inputs[0]
            if value is not None and value.const_value is not None and value.dtype == ir.DataType.FLOAT \
                    and value.shape is not None and len(value.shape) == 2:
                tables[value.name] = value
    return tables


def transposed_ties(model: ir.Model, skip: set[str] = frozenset()) -> dict[str, str]:
    """MatMul node name -> embedding table name, for each MatMul (outside `skip`) whose constant weight equals a
    table transposed. Shapes are compared first: only a weight shaped like a table's transpose is read."""
    tables = embedding_tables(model)
    ties: dict[str, str] = {}
    if not tables:
        return ties
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.name in skip:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or weight.name in tables or weight.shape is None:
            continue
        candidates = [v for v in tables.values() if tuple(v.shape) == tuple(weight.shape)[::-1]]
        array = const_array(weight) if candidates else None
        if array is None:
            continue
        ties.update({node.name: table.name for table in candidates if np.array_equal(const_array(table).T, array)})
    return ties


def share_transposed_copies(model: ir.Model) -> int:
    """Each tied MatMul reads Transpose(table) (one Transpose per table), and a copy nothing else reads leaves
    the initializers. Returns how many MatMuls now read their table."""
    ties = transposed_ties(model)
    if not ties:
        return 0
    nodes = {node.name: node for node in model.graph if node.name in ties}
    tables = embedding_tables(model)
    transposed: dict[str, ir.Value] = {}
    for name, table in ties.items():
        node = nodes[name]
        copy = node.inputs[1]
        if table not in transposed:
            transposed[table] = new_node(model.graph, node, "Transpose", [tables[table]], {"perm": [1, 0]},
                                         name="tied_weight").outputs[0]
        node.replace_input_with(1, transposed[table])
        if not copy.uses() and not copy.is_graph_output() and copy.name in model.graph.initializers:
            model.graph.initializers.pop(copy.name)
    return len(ties)
