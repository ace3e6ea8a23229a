"""Reshapes and Transposes that put data back where it was go after lowering (TorchScript's head merge after a
fused attention): proved from shapes known as numbers and the inputs' named axes, and the sizes targets are
built from; the same graph computes the same values after, and anything that really moves data stays."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from attnopt.passes.cleanup import tidy
from attnopt.passes.reshape_chains import undo_reshape_chains
from attnopt.passes.shape_reads import share_equal_shape_reads
from attnopt.runtime.onnxruntime import ort_module

WEIGHT = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 10


def _model(last_perm: list[int] = [0, 2, 1, 3], middle: str = "same") -> onnx.ModelProto:
    """x (B, S, 8) split into heads (B, 2, S, 4), reshaped to (B, -1, S, 4) read off x's sizes, heads merged
    back with the inverse Transpose and a Reshape to (B, S, -1), then a MatMul: all of it but the MatMul
    moves nothing. `middle` "other": the middle Reshape really changes the shape ((B, -1, 4) of rank 3)."""
    nodes = [
        helper.make_node("Reshape", ["x", "split_shape"], ["bshd"]),
        helper.make_node("Transpose", ["bshd"], ["bhsd"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["x"], ["sizes"]),
        helper.make_node("Gather", ["sizes", "zero"], ["b"]),
        helper.make_node("Gather", ["sizes", "one"], ["s"]),
        helper.make_node("Unsqueeze", ["b", "axis0"], ["b1"]),
        helper.make_node("Unsqueeze", ["s", "axis0"], ["s1"]),
        helper.make_node("Concat", ["b1", "minus_one", "s1", "four"] if middle == "same" else ["b1", "minus_one", "four"],
                         ["middle_shape"], axis=0),
        helper.make_node("Reshape", ["bhsd", "middle_shape"], ["again"]),
    ]
    if middle == "same":
        nodes += [helper.make_node("Transpose", ["again"], ["merged"], perm=last_perm),
                  helper.make_node("Concat", ["b1", "s1", "minus_one"], ["out_shape"], axis=0),
                  helper.make_node("Reshape", ["merged", "out_shape"], ["flat"])]
    else:
        nodes.append(helper.make_node("Reshape", ["again", "flat_shape"], ["flat"]))
    nodes.append(helper.make_node("MatMul", ["flat", "w"], ["y"]))
    constants = {"split_shape": np.array([0, 0, 2, 4]), "zero": np.array(0), "one": np.array(1),
                 "axis0": np.array([0]), "minus_one": np.array([-1]), "four": np.array([4]),
                 "flat_shape": np.array([0, -1, 8])}
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence_length", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.int64), k) for k, v in constants.items()]
        + [numpy_helper.from_array(WEIGHT, "w")],
        value_info=[helper.make_tensor_value_info("bshd", TensorProto.FLOAT, ["batch", "sequence_length", 2, 4]),
                    helper.make_tensor_value_info("bhsd", TensorProto.FLOAT, ["batch", 2, "sequence_length", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _undone(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = ir.serde.deserialize_model(proto)
    count = undo_reshape_chains(model)
    tidy(model)
    return ir.serde.serialize_model(model), count


def _outputs(proto: onnx.ModelProto) -> list[np.ndarray]:
    session = ort_module().InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return [session.run(None, {"x": rng.standard_normal((b, s, 8), dtype=np.float32)})[0] for b, s in ((2, 3), (1, 5))]


def test_a_head_merge_after_the_kernel_goes_whole() -> None:
    model = _model()
    after, count = _undone(model)
    assert count >= 4
    assert [n.op_type for n in after.graph.node] == ["MatMul"]
    assert after.graph.node[0].input[0] == "x"
    for want, got in zip(_outputs(model), _outputs(after)):
        np.testing.assert_array_equal(got, want)


def test_what_moves_data_stays() -> None:
    """A second Transpose that does not undo the first, or a Reshape to another shape, is kept."""
    for model in (_model(last_perm=[0, 2, 3, 1]), _model(middle="other")):
        after, _ = _undone(model)
        ops = [n.op_type for n in after.graph.node]
        assert "Transpose" in ops and ops.count("Reshape") >= 2, ops
        for want, got in zip(_outputs(model), _outputs(after)):
            np.testing.assert_array_equal(got, want)


def test_shape_reads_of_equal_shapes_read_one_value() -> None:
    """Shape(relu(x)) reads x, whose shape relu(x) has by the declared axes; a value of unknown shape is
    not matched with anything."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Shape", ["h"], ["h_shape"]),
             helper.make_node("Relu", ["x"], ["g"]), helper.make_node("Shape", ["g"], ["g_shape"])]
    graph = helper.make_graph(
        nodes, "reads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info(n, TensorProto.INT64, [2]) for n in ("h_shape", "g_shape")],
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 8]),
                    helper.make_tensor_value_info("g", TensorProto.FLOAT, ["unk__0", 8])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert share_equal_shape_reads(model) == 1
    reads = {n.outputs[0].name: n.inputs[0].name for n in model.graph if n.op_type == "Shape"}
    assert reads == {"h_shape": "x", "g_shape": "g"}
