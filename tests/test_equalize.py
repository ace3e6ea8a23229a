"""Activation-aware scaling before weight-only rounding: where it applies on an exported decoder, that it leaves
the fp32 model's outputs as they were while the quantized product's error falls, and that its emulation of the
rounding is the quantizer's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import attnopt
from attnopt.passes.precision import weight_only
from attnopt.passes.precision.equalize import equalize_inputs, round_activations, round_blocks, scaling_sites

RNG = np.random.default_rng(0)


def _run(model: ir.Model | bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model if isinstance(model, bytes) else ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_an_exported_decoder_is_scaled_at_its_norms_and_gated_products(tmp_path: Path) -> None:
    path = attnopt.export("qwen2-tiny", tmp_path / "model.onnx", verify=False).path
    model = ir.load(path)
    tied = weight_only.materialize_transposed_weights(model)
    layers = {layer.name for layer in weight_only.weight_layers(model)}
    sites = scaling_sites(model, layers - set(tied))
    # per layer: the input norm's scale before Q, K and V; the post-attention norm's before gate and up; up's
    # columns before down. The final norm feeds the tied LM head, whose weight is the embedding table: left alone
    assert [len(site.readers) for site in sites] == [3, 2, 1] * 2
    assert all(node.op_type == "Mul" for site in sites[:2] for node, _ in site.divided)
    assert sites[2].divided[0][0].op_type == "MatMul" and sites[2].divided[0][1] == 1
    assert not any(set(tied) & {r.name for r in site.readers} for site in sites)


def _gated_mlp(gamma: np.ndarray, weights: list[np.ndarray]) -> ir.Model:
    """x * gamma -> gate, up; silu(gate) * up -> down: two scaling sites (the first also read by a Shape, as
    TorchScript exports read sizes)."""
    nodes = [helper.make_node("Mul", ["x", "gamma"], ["normed"], name="norm_scale"),
             helper.make_node("MatMul", ["normed", "w_gate"], ["gate"], name="gate"),
             helper.make_node("MatMul", ["normed", "w_up"], ["up"], name="up"),
             helper.make_node("Sigmoid", ["gate"], ["sig"]),
             helper.make_node("Mul", ["gate", "sig"], ["silu"]),
             helper.make_node("Mul", ["silu", "up"], ["hidden"], name="gated"),
             helper.make_node("MatMul", ["hidden", "w_down"], ["y"], name="down"),
             helper.make_node("Shape", ["normed"], ["normed_shape"])]
    inits = [numpy_helper.from_array(gamma, "gamma")] + [
        numpy_helper.from_array(w, name) for w, name in zip(weights, ("w_gate", "w_up", "w_down"))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", 64]),
                               helper.make_tensor_value_info("normed_shape", TensorProto.INT64, [3])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


@pytest.mark.parametrize("bits", [4, 8])
def test_scaling_keeps_fp32_and_lowers_the_quantized_error(tmp_path: Path, bits: int) -> None:
    gamma = np.ones(64, np.float32)
    gamma[[3, 40]] = 25.0  # two outlier channels, as real decoders carry
    weights = [RNG.standard_normal(shape).astype(np.float32) * 0.1 for shape in ((64, 128), (64, 128), (128, 64))]
    model = _gated_mlp(gamma, weights)
    path = tmp_path / "mlp.onnx"
    ir.save(model, path)
    feeds = [{"x": RNG.standard_normal((1, 48, 64)).astype(np.float32)} for _ in range(2)]
    before = [_run(model, f) for f in feeds]
    records = equalize_inputs(model, path, {"gate", "up", "down"}, feeds, bits, 32, True, True)
    assert [r["scaled_by"] for r in records] == ["norm_scale", "up"]
    assert all(r["alpha"] > 0 and r["error"] < r["error_unscaled"] for r in records)
    assert records[0]["error"] < 0.5 * records[0]["error_unscaled"]  # the outliers' site gains most
    for f, b in zip(feeds, before):
        np.testing.assert_allclose(_run(model, f), b, rtol=1e-4, atol=1e-5)


def test_a_shared_scale_is_copied_for_the_site_it_serves(tmp_path: Path) -> None:
    """An exporter stores identical norm scales once; dividing it for one site must not move the others."""
    gamma = np.ones(64, np.float32)
    gamma[5] = 30.0
    weights = [RNG.standard_normal(shape).astype(np.float32) * 0.1 for shape in ((64, 128), (64, 128), (128, 64))]
    model = _gated_mlp(gamma, weights)
    other = ir.node("Mul", [model.graph.inputs[0], model.graph.initializers["gamma"]], name="elsewhere")
    model.graph.append(other)
    model.graph.outputs.append(other.outputs[0])
    other.outputs[0].name = "elsewhere_out"
    path = tmp_path / "mlp.onnx"
    ir.save(model, path)
    feeds = [{"x": RNG.standard_normal((1, 32, 64)).astype(np.float32)}]
    equalize_inputs(model, path, {"gate", "up", "down"}, feeds, 4, 32, True, True)
    np.testing.assert_array_equal(model.graph.initializers["gamma"].const_value.numpy(), gamma)
    norm = next(n for n in model.graph if n.name == "norm_scale")
    assert norm.inputs[1].name != "gamma" and norm.inputs[1].const_value.numpy()[5] < 30.0


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_the_emulated_rounding_is_the_quantizers(bits: int, symmetric: bool) -> None:
    """x @ round_blocks(W) against MatMulNBits as onnxruntime's quantizer writes it, computed in fp32
    (accuracy level 0): the scaling is chosen for the weights the model will hold."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    weight = RNG.standard_normal((64, 24)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 24])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, accuracy_level=0, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=symmetric, accuracy_level=0,
                                     algo_config=config)
    quantizer.process()
    x = RNG.standard_normal((5, 64)).astype(np.float32)
    quantized = _run(quantizer.model.model.SerializeToString(), {"x": x})
    np.testing.assert_allclose(x @ round_blocks(weight, bits, 32, symmetric), quantized, rtol=1e-4, atol=1e-4)
    assert not np.allclose(x @ weight, quantized, rtol=1e-4, atol=1e-4)  # the rounding is there to match


def test_activation_rounding_is_int8_per_row_and_block() -> None:
    x = np.zeros((2, 64), np.float32)
    x[0, :32] = np.linspace(-1, 1, 32)
    x[1, 32:] = 254.0
    rounded = round_activations(x, 32)
    assert np.abs(rounded[0, :32] - x[0, :32]).max() <= 0.5 / 127 + 1e-7  # its own scale: max 1 over 127 levels
    np.testing.assert_array_equal(rounded[1, 32:], x[1, 32:])  # a constant block is exact
    np.testing.assert_array_equal(rounded[:, 32:][0], 0.0)
