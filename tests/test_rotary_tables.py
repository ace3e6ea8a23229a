"""Rotary tables by position: the model's own cos and sin ops, run once on positions 0..N-1, become
constant tables only where they are a function of the position ids alone (and repeat their halves, as
the rotate-half form does)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from attnopt.passes.lower.rotary_tables import position_tables

INV_FREQ = (1.0 / (10000 ** (np.arange(0, 8, 2) / 8))).astype(np.float32)


def _model(first_half: str = "freqs", second_half: str = "freqs", extra: list[onnx.NodeProto] | None = None,
           angle_source: str = "positions_f", extra_inputs: list[onnx.ValueInfoProto] | None = None) -> ir.Model:
    """cos/sin = Cos/Sin(concat(a, b)) with freqs = float(position_ids)[..., None] * inv_freq, in the
    (B, 1, S, D) layout the canonical rotary takes."""
    nodes = [
        helper.make_node("Unsqueeze", ["position_ids", "last"], ["positions_3d"]),
        helper.make_node("Cast", ["positions_3d"], ["positions_f"], to=TensorProto.FLOAT),
        *(extra or []),
        helper.make_node("Mul", [angle_source, "inv_freq"], ["freqs"]),
        helper.make_node("Mul", ["freqs", "two"], ["double"]),
        helper.make_node("Concat", [first_half, second_half], ["angles"], axis=-1),
        helper.make_node("Unsqueeze", ["angles", "one"], ["angles_4d"]),
        helper.make_node("Cos", ["angles_4d"], ["cos"]),
        helper.make_node("Sin", ["angles_4d"], ["sin"]),
    ]
    graph = helper.make_graph(
        nodes, "rotary", [helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
                          *(extra_inputs or [])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("cos", "sin")],
        [onnx.numpy_helper.from_array(INV_FREQ, "inv_freq"), onnx.numpy_helper.from_array(np.float32(2), "two"),
         onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "one")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _tables(model: ir.Model, rows: int = 64):
    outputs = {v.name: v for v in model.graph.outputs}
    return position_tables(model, outputs["cos"], outputs["sin"], 8, rows)


def test_tables_hold_the_models_own_values_by_position() -> None:
    model = _model()
    found = _tables(model, rows=64)
    assert found is not None
    cos, sin, positions = found
    assert positions.name == "position_ids"
    angles = np.arange(64, dtype=np.float32)[:, None] * INV_FREQ
    assert cos.const_value.numpy().shape == (64, 4)
    np.testing.assert_allclose(cos.const_value.numpy(), np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin.const_value.numpy(), np.sin(angles), atol=1e-6)


def test_no_tables_where_positions_mix() -> None:
    """A running sum over the sequence (positions from a mask, say) is not a function of one position."""
    mixed = _model(angle_source="summed", extra=[helper.make_node("CumSum", ["positions_f", "axis1"], ["summed"])])
    mixed.graph.initializers["axis1"] = ir.Value(name="axis1", const_value=ir.tensor(np.array(1, np.int64)))
    assert _tables(mixed) is None


def test_no_tables_where_halves_differ_or_another_input_counts() -> None:
    assert _tables(_model(second_half="double")) is None
    shifted = _model(angle_source="moved", extra=[helper.make_node("Add", ["positions_f", "shift"], ["moved"])],
                     extra_inputs=[helper.make_tensor_value_info("shift", TensorProto.FLOAT, [1])])
    assert _tables(shifted) is None


def test_no_tables_where_the_layout_reorders_positions() -> None:
    """Only the run on scrambled positions of another shape tells this one: each op is position-wise, but
    the transposed layout puts rows in another order than the position ids'."""
    swapped = _model(angle_source="swapped", extra=[helper.make_node("Transpose", ["positions_f"], ["swapped"],
                                                                     perm=[1, 0, 2])])
    assert _tables(swapped) is None
    assert _tables(_model()) is not None
