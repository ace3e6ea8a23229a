"""A tied LM head stored as a transposed copy of the embedding table reads the table instead; a weight that
only nearly equals the table's transpose is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from attnopt.passes.tied_weights import share_transposed_copies


def _tied_model(head: np.ndarray, table: np.ndarray) -> ir.Model:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["hidden"], name="embed"),
         helper.make_node("MatMul", ["hidden", "head"], ["logits"], name="lm_head")],
        "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", table.shape[0]])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _logits(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


def test_a_transposed_copy_reads_the_table() -> None:
    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    model = _tied_model(np.ascontiguousarray(table.T), table)
    ids = np.array([[1, 7, 49]], np.int64)
    before = _logits(model, ids)
    assert share_transposed_copies(model) == 1
    assert sorted(model.graph.initializers) == ["table"]
    assert [n.op_type for n in model.graph] == ["Gather", "Transpose", "MatMul"]
    onnx.checker.check_model(ir.to_proto(model))
    np.testing.assert_array_equal(_logits(model, ids), before)


def test_a_weight_that_differs_by_one_value_stays() -> None:
    table = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    head = np.ascontiguousarray(table.T)
    head[3, 20] += 1e-6
    model = _tied_model(head, table)
    assert share_transposed_copies(model) == 0
    assert sorted(model.graph.initializers) == ["head", "table"]
