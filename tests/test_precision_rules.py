"""Tier 1 for the precision passes: hand-written graphs, the fp16 cast rules, the mixed-precision
search on a model whose activations leave the fp16 range, and Q/DQ placement as TensorRT wants it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from attnopt.parity.tolerance import DEFAULTS
from attnopt.passes.precision.cast import convert, emulated, nodes_by_precision
from attnopt.passes.precision.mixed import search
from attnopt.passes.precision.placement import check_placement
from attnopt.passes.verify import run_model

import graphs


def _ir(text: str) -> ir.Model:
    model = ir.serde.deserialize_model(graphs.parse(text))
    from attnopt.passes.cleanup import cleanup

    cleanup(model)
    return model


def _float_input_types(model: ir.Model) -> list[set]:
    floats = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    return [{v.dtype for v in n.inputs if v is not None and v.dtype in floats}
            for n in model.graph if n.op_type != "Cast"]


def test_fp16_rules_keep_fragile_ops_and_write_every_cast() -> None:
    model = _ir(graphs.PRECISION_MIX)
    feeds = [{"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}]
    want = run_model(model, feeds)
    report = convert(model, "fp16")
    ops = {n.name: n.op_type for n in model.graph}
    kept_ops = sorted(ops[name] for name in report.kept)
    assert kept_ops == ["Pow", "ReduceMean", "ReduceMean", "Softmax", "Sqrt"]
    assert all("policy" in reason for reason in report.kept.values())
    # strongly typed: no node mixes float types; inputs and outputs stay fp32
    assert all(len(types) <= 1 for types in _float_input_types(model))
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT and model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert model.graph.outputs[0].name == "out"
    # no Cast to the type it already has, and no fp16 -> fp32 -> fp16 round trip
    for node in model.graph:
        if node.op_type == "Cast":
            assert node.inputs[0].dtype != node.outputs[0].dtype
            inner = node.inputs[0].producer()
            assert not (inner is not None and inner.op_type == "Cast" and inner.inputs[0].dtype == node.outputs[0].dtype)
    # the 1e5 constant does not fit fp16: clamped, and said so
    assert [c["clamped"] for c in report.clamped if c["max_abs"] > 65504] == [1]
    assert nodes_by_precision(model)["fp32"] == 5
    got = run_model(model, feeds)
    assert np.isfinite(got[0]["out"]).all()
    assert not np.allclose(got[0]["out"], want[0]["out"], atol=1e-3)  # the clamped constant changed the result


def test_bf16_emulation_rounds_like_bf16() -> None:
    model = _ir(graphs.LINEAR_ATTENTION)
    feeds = [{"x": np.random.default_rng(1).standard_normal((2, 2, 5, 4)).astype(np.float32)}]
    want = run_model(model, feeds)[0]["out"]
    convert(model, "bf16", reduced_softmax=True)
    assert any(v.dtype == ir.DataType.BFLOAT16 for v in model.graph.initializers.values())
    got = run_model(emulated(model), feeds)[0]["out"]
    error = np.abs(got - want).max()
    assert 0 < error < 0.05  # rounded to 8 mantissa bits: visibly different, still close


def _overflowing_model(tmp_path) -> ir.Model:
    import torch

    class Overflow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down, self.norm = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8), torch.nn.LayerNorm(32)
            with torch.no_grad():
                self.up.weight.mul_(1e5)  # activations around 1e5-1e6: beyond fp16's 65504

        def forward(self, x):
            h = self.up(x) / 1e5
            return self.down(self.norm(h) + h)

    path = tmp_path / "overflow.onnx"
    torch.onnx.export(Overflow(), (torch.randn(2, 4, 16),), path, dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    return ir.load(path)


def test_mixed_precision_keeps_what_leaves_the_fp16_range(tmp_path) -> None:
    model = _overflowing_model(tmp_path)
    feeds = [{"x": np.random.default_rng(i).standard_normal((3, 4, 16)).astype(np.float32) * 4} for i in range(3)]
    reference = run_model(model, feeds)
    result = search(model, "fp16", feeds, DEFAULTS["fp16"], reference)
    assert result.steps[0]["failure"], "plain fp16 must break this model, or the test proves nothing"
    assert result.passed, result.failure
    assert any("beyond fp16" in reason for reason in result.conversion.kept.values())
    kept_ops = {n.op_type for n in result.model.graph if n.name in result.conversion.kept}
    assert "MatMul" in kept_ops
    got = run_model(result.model, feeds)
    for want, have in zip(reference, got):
        for name in want:
            np.testing.assert_allclose(have[name], want[name], atol=1e-2)


def test_static_qdq_on_linear_and_both_attention_matmuls(tmp_path) -> None:
    import attnopt

    source = tmp_path / "attention.onnx"
    onnx.save(graphs.parse(graphs.LINEAR_ATTENTION), source)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).standard_normal((4, 2, 6, 4)).astype(np.float32))
    result = attnopt.quantize(source, tmp_path / "attention.int8.onnx", precision="int8", method="static",
                              calibration=tmp_path / "calib.npz", accuracy_aware=False, tolerance={"cosine": 0.9})
    placement = result.report["placement"]
    assert placement == {"quantized_linear": 1, "quantized_attention_matmuls": 2, "per_channel_weights": 1,
                         "issues": []}
    model = ir.load(result.path)
    for node in model.graph:
        if node.op_type == "MatMul":  # nothing between DequantizeLinear and the MatMul
            assert all(v.producer().op_type == "DequantizeLinear" for v in node.inputs)
        if node.op_type == "DequantizeLinear" and len(node.inputs) > 2 and node.inputs[2] is not None:
            assert not np.any(node.inputs[2].const_value.numpy())  # symmetric
    assert result.report["nodes"]["int8"] == 3


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_calibration_method_gives_a_close_qdq_model(tmp_path, method: str) -> None:
    import attnopt

    source = tmp_path / "attention.onnx"
    onnx.save(graphs.parse(graphs.LINEAR_ATTENTION), source)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 2, 6, 4)).astype(np.float32))
    result = attnopt.quantize(source, tmp_path / f"{method}.onnx", precision="int8", method="static",
                              calibration=tmp_path / "calib.npz", calibration_method=method, accuracy_aware=False,
                              tolerance={"cosine": 0.98})
    assert result.passed, result.report["failure"]
    assert result.report["calibration"]["method"] == method
    assert result.report["placement"]["issues"] == []


def test_placement_check_names_what_tensorrt_rejects() -> None:
    model = ir.serde.deserialize_model(graphs.parse(graphs.QDQ_MISPLACED))
    issues = check_placement(model)["issues"]
    assert any("only some inputs come straight from DequantizeLinear" in i for i in issues)
    assert any("zero point is not int8 zero" in i for i in issues)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_conversion_is_deterministic(precision: str) -> None:
    first, second = _ir(graphs.LINEAR_ATTENTION), _ir(graphs.LINEAR_ATTENTION)
    convert(first, precision)
    convert(second, precision)
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()


def test_accuracy_leaves_padding_out_of_abs_error_but_not_out_of_finiteness() -> None:
    """A left-padded row's padding positions are read by nothing (attnopt check leaves them out): what a
    reduced-precision kernel writes there must not fail an atol, but a NaN there still fails (it would
    poison later steps through 0 * NaN)."""
    from attnopt.passes.precision.accuracy import measure

    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=np.int64)
    feed = {"input_ids": np.ones((2, 4), np.int64), "attention_mask": mask}
    want = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    got = want.copy()
    got[0, :2] += 5.0  # the padding positions of row 0 only
    accuracy = measure([{"hidden": want}], [{"hidden": got}], [feed])
    assert accuracy.max_abs == 0.0 and accuracy.mean_abs == 0.0 and not accuracy.failure(DEFAULTS["fp16"])
    got[1, 3] += 0.5  # a real token
    assert measure([{"hidden": want}], [{"hidden": got}], [feed]).max_abs == pytest.approx(0.5)
    got[0, 0] = np.nan
    assert measure([{"hidden": want}], [{"hidden": got}], [feed]).finite is False
    # element by element: a NaN in the reference's padding does not excuse one at a real token of the model's
    got[0, 0], want[0, 0, 0], got[1, 2, 0] = 0.0, np.nan, np.nan
    assert measure([{"hidden": want}], [{"hidden": got}], [feed]).finite is False


def test_range_scan_takes_mask_fills_for_masks() -> None:
    """The fused ops' mask floor (-1e30) and fp32's lowest are mask fills, not values beyond fp16: holding
    the attention that reads them in fp32 would keep GroupQueryAttention off CUDA (fp16/bf16 kernels only)."""
    from attnopt.passes.lower.common import MASK_FLOOR
    from attnopt.passes.precision.mixed import activation_ranges

    model = _ir(f"""
        g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z, float[2, 3] w) {{
            floor = Constant <value = float {{{MASK_FLOOR}}}> ()
            y = Max (x, floor)
            big = Constant <value = float {{70000.0}}> ()
            z = Mul (x, big)
            w = Identity (x)
        }}""")
    x = np.array([[0.0, -3.4e38, 1.0], [-1e30, 0.5, 0.0]], dtype=np.float32)
    ranges = activation_ranges(model, [{"x": x}])
    assert ranges["y"] == ranges["w"] == 1.0  # the fills (the floor, fp32's lowest) left out
    assert ranges["z"] == pytest.approx(70000.0)  # a real value beyond fp16's 65504 still counts
