"""Shape reads of a reshaped tensor read off the Reshape's target instead: same values on ONNX Runtime, and
the reshaped tensor is no longer read for its size; parts Reshape infers (-1) and indices of another rank are
left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from attnopt.passes.shape_reads import reroute_shape_reads


def _graph(shape_attributes: dict, index: list | int, perms: list, parts: list[str]) -> onnx.ModelProto:
    """x (B, S, 8) reshaped to Concat(parts) (b, s: x's sizes; m1: -1; d2, d4: 2, 4), transposed by `perms`, then
    Shape (with `shape_attributes`) read whole and at `index`."""
    def constant(name: str, value) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.array(value, np.int64)))

    nodes = [constant("zero", [0]), constant("one", [1]), constant("m1", [-1]), constant("d2", [2]),
             constant("d4", [4]),
             constant("index", index), helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Gather", ["sx", "zero"], ["b"]), helper.make_node("Gather", ["sx", "one"], ["s"]),
             helper.make_node("Concat", parts, ["target"], axis=0), helper.make_node("Reshape", ["x", "target"], ["r"])]
    current = "r"
    for k, perm in enumerate(perms):
        nodes.append(helper.make_node("Transpose", [current], [f"t{k}"], perm=perm))
        current = f"t{k}"
    nodes += [helper.make_node("Shape", [current], ["shape"], **shape_attributes),
              helper.make_node("Gather", ["shape", "index"], ["size"]),
              helper.make_node("Identity", ["shape"], ["shape_out"]), helper.make_node("Identity", ["size"], ["size_out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
                              [helper.make_tensor_value_info("shape_out", TensorProto.INT64, None),
                               helper.make_tensor_value_info("size_out", TensorProto.INT64, None)])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.zeros((2, 3, 8), np.float32)})


def _rerouted(model: onnx.ModelProto) -> tuple[int, onnx.ModelProto]:
    import onnx_ir.passes.common as common

    graph_model = ir.serde.deserialize_model(model)
    count = reroute_shape_reads(graph_model)
    common.RemoveUnusedNodesPass()(graph_model)  # as the pass's tidy does: what read the shape goes
    return count, ir.serde.serialize_model(graph_model)


@pytest.mark.parametrize("shape_attributes,index,perms,parts,rerouted", [
    ({"start": 1, "end": 3}, [1], [[0, 2, 1, 3], [1, 0, 2, 3]], ["b", "s", "d2", "d4"], 1),  # the slice itself
    ({}, 2, [[0, 2, 1, 3]], ["b", "s", "m1", "d4"], 1),  # the whole shape holds a -1: the Gather is rerouted
    ({}, -4, [[0, 2, 1, 3]], ["b", "s", "m1", "d4"], 1),  # negative index, counted from the end
    ({}, 1, [[0, 2, 1, 3]], ["b", "s", "m1", "d4"], 0),  # the axis Reshape infers: left alone
    ({}, [[2]], [[0, 2, 1, 3]], ["b", "s", "m1", "d4"], 0),  # an index of rank 2: left alone
])
def test_sizes_are_read_off_the_reshape_target(shape_attributes, index, perms, parts, rerouted) -> None:
    model = _graph(shape_attributes, index, perms, parts)
    count, after = _rerouted(model)
    assert count == rerouted
    assert [a.tolist() for a in _run(after)] == [a.tolist() for a in _run(model)]
    shapes = [n for n in after.graph.node if n.op_type == "Shape" and n.input[0] != "x"]
    if rerouted and shape_attributes:  # the slice read off the target: the Shape, Transposes and Reshape are gone
        assert not shapes and not {"Transpose", "Reshape"} & {n.op_type for n in after.graph.node}
        return
    readers = {n.op_type for n in after.graph.node if shapes[0].output[0] in n.input}
    # the whole shape is still output (its Identity reads it); a rerouted Gather no longer reads it
    assert readers == ({"Identity"} if rerouted else {"Identity", "Gather"})
