"""A tied embedding served from its quantized LM head: when the LM head (a MatMul on the embedding table's
transposed copy) has become MatMulNBits, the embedding's Gather on the fp32 table becomes ONNX Runtime's
GatherBlockQuantized on the head's own codes and scales (the same blocks of `block_size` along the hidden axis,
one row a token), and the fp32 table leaves the model: the largest tensor of a small decoder, stored once, in 4
or 8 bits. Each token's embedding is then the dequantized row of the LM head's weight (or, where the head's
codes were fitted to its inputs, of 8-bit round-to-nearest blocks of the same table), which the accuracy the
caller measures includes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def share_quantized_embedding(model: onnx.ModelProto, tied: dict[str, str],
                              own: dict[str, tuple[onnx.NodeProto, list[onnx.TensorProto]]] | None = None
                              ) -> list[str]:
    """For each LM head node name -> embedding table name in `tied` whose head is now MatMulNBits (its zero
    points, where it has them, are read by both ops in one layout: uint8, two a byte for 4 bits; without them
    both read 8, or 128 for 8 bits), every Gather of the table along axis 0 becomes GatherBlockQuantized on the
    head's data; the table leaves the graph where nothing else reads it. A head in `own` (head node name -> a
    MatMulNBits of the same weight and its tables: round to nearest at 8 bits) had its codes fitted to its own
    inputs (gptq pushes each row's error onto the others; mse and hqq weigh channels by the head's input), and
    the embedding reads those blocks instead. On SmolLM2-135M (gptq, every MatMul at 4 bits, zero points),
    held-out top-1 and KL: fp32 table 0.80, 0.12; 8-bit blocks of its own 0.79, 0.12 (+14 MB over 4-bit ones);
    4-bit ones 0.78, 0.14; the head's own blocks missed int4's tolerance on the calibration text. A head with
    HQQ's offsets beside it (see weight_only._write_blocks) and no blocks in `own` keeps the fp32 table: its
    blocks alone are not its weight. Returns the embedding tables replaced."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    made = {n.name: n for n in graph.node if n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN}
    replaced = []
    for head, table in tied.items():
        node = next((made[f"{head}_Q{bits}"] for bits in (4, 8) if f"{head}_Q{bits}" in made), None)
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table
                   and _attribute(n, "axis", 0) == 0]
        if node is None or table not in initializers or table in replaced or not gathers:
            continue
        if head in (own or {}):  # the embedding's own blocks, renamed beside the head's
            node, tables = own[head]
            names = {t.name: f"{table}_{role}" for t, role in zip(tables, ("codes", "scales", "zero_points"))}
            for t in tables:
                initializers[names[t.name]] = renamed = onnx.TensorProto()
                renamed.CopyFrom(t)
                renamed.name = names[t.name]
                graph.initializer.append(renamed)
            inputs = [names.get(name, name) for name in node.input]
        elif f"{node.name}_offsets" in initializers:
            continue
        else:
            inputs = list(node.input)
        zero_points = inputs[3] if len(inputs) == 4 and inputs[3] else None
        if len(inputs) > 4 or (zero_points is not None and zero_points not in initializers):
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n = attributes["N"]
        data_name, scales_name = inputs[1], inputs[2]
        rows = f"{data_name}_rows"
        shape = f"{rows}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([n, -1], np.int64), shape))
        scales_name = _as_rows(graph, initializers[scales_name], n)
        zero_points = _as_rows(graph, initializers[zero_points], n) if zero_points is not None else None
        nodes = [helper.make_node("Reshape", [data_name, shape], [rows], name=f"{rows}_reshape")]
        for gather in gathers:
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [rows, gather.input[1], scales_name, *([zero_points] if zero_points else [])],
                list(gather.output), name=gather.name,
                domain=MS_DOMAIN, bits=attributes["bits"], block_size=attributes["block_size"], gather_axis=0,
                quantize_axis=1))
        _replace(graph, gathers, nodes)
        replaced.append(table)
    if replaced:
        read = {name for node in graph.node for name in node.input}
        for table in set(replaced) - read:
            graph.initializer.remove(initializers[table])
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return replaced


def _as_rows(graph: onnx.GraphProto, tensor: onnx.TensorProto, n: int) -> str:
    """A per-block tensor (scales, zero points) as GatherBlockQuantized reads it, [N, ...]: its name where it is
    2-D already, else a reshaped copy's (MatMulNBits also takes them flat)."""
    if len(tensor.dims) == 2:
        return tensor.name
    rows = numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(n, -1), f"{tensor.name}_rows")
    graph.initializer.append(rows)
    return rows.name


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _replace(graph: onnx.GraphProto, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
    """`new` in place of the first of `old` (the Reshape before every Gather it feeds), the rest of `old` gone."""
    first, gone = old[0].output[0], {n.output[0] for n in old}  # output names: unique in the graph
    ordered = []
    for node in graph.node:
        if node.output[0] == first:
            ordered.extend(new)
        elif node.output[0] not in gone:
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
