"""A tied embedding served from its quantized LM head: when the LM head (a MatMul on the embedding table's
transposed copy) has become MatMulNBits, the embedding's Gather on the fp32 table becomes ONNX Runtime's
GatherBlockQuantized on the head's own codes and scales (the same blocks of `block_size` along the hidden axis,
one row a token), and the fp32 table leaves the model: the largest tensor of a small decoder, stored once, in 4
or 8 bits. Each token's embedding is then the dequantized row of the LM head's weight, which the accuracy the
caller measures includes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def share_quantized_embedding(model: onnx.ModelProto, tied: dict[str, str]) -> list[str]:
    """For each LM head node name -> embedding table name in `tied` whose head is now MatMulNBits without zero
    points (uint8 data reads zero point 8, or 128 for 8 bits, in both ops), every Gather of the table along axis
    0 becomes GatherBlockQuantized on the head's data; the table leaves the graph where nothing else reads it.
    Returns the embedding tables replaced."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    made = {n.name: n for n in graph.node if n.op_type == "MatMulNBits" and n.domain == MS_DOMAIN}
    replaced = []
    for head, table in tied.items():
        node = next((made[f"{head}_Q{bits}"] for bits in (4, 8) if f"{head}_Q{bits}" in made), None)
        if node is None or len(node.input) > 3 or table not in initializers:
            continue
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == table
                   and _attribute(n, "axis", 0) == 0]
        if not gathers:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n = attributes["N"]
        data_name, scales_name = node.input[1], node.input[2]
        rows = f"{data_name}_rows"
        shape = f"{rows}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([n, -1], np.int64), shape))
        scales = numpy_helper.to_array(initializers[scales_name])
        if scales.ndim != 2:  # one scale a block, [N, K/block], as GatherBlockQuantized reads them
            scales_name = f"{scales_name}_rows"
            graph.initializer.append(numpy_helper.from_array(scales.reshape(n, -1), scales_name))
        nodes = [helper.make_node("Reshape", [data_name, shape], [rows], name=f"{rows}_reshape")]
        for gather in gathers:
            nodes.append(helper.make_node(
                "GatherBlockQuantized", [rows, gather.input[1], scales_name], list(gather.output), name=gather.name,
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
