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


def _outlier_weights(rng: np.random.Generator) -> list[np.ndarray]:
    """gate, up and down of a 64 -> 128 -> 64 MLP; a few of up's columns large, so the gated product has outlier
    channels as well."""
    gate, up, down = (rng.standard_normal(shape).astype(np.float32) * 0.1 for shape in ((64, 128), (64, 128),
                                                                                        (128, 64)))
    up[:, [7, 90]] *= 20.0
    return [gate, up, down]


@pytest.mark.parametrize("bits", [4, 8])
def test_scaling_keeps_fp32_and_lowers_the_quantized_error(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    gamma = np.ones(64, np.float32)
    gamma[[3, 40]] = 25.0  # two outlier channels, as real decoders carry
    model = _gated_mlp(gamma, _outlier_weights(rng))
    path = tmp_path / "mlp.onnx"
    ir.save(model, path)
    feeds = [{"x": rng.standard_normal((1, 48, 64)).astype(np.float32)} for _ in range(2)]
    before = [_run(model, f) for f in feeds]
    records = equalize_inputs(model, path, {"gate", "up", "down"}, feeds, bits, 32, True, True)
    assert [r["scaled_by"] for r in records] == ["norm_scale", "up"]
    assert all(r["alpha"] > 0 and r["error"] < 0.7 * r["error_unscaled"] for r in records), records
    for f, b in zip(feeds, before):
        np.testing.assert_allclose(_run(model, f), b, rtol=1e-4, atol=1e-5)


def _fused_norms() -> ir.Model:
    """SkipSimplifiedLayerNormalization (with its pre-norm bias, and the residual sum read on) before two
    projections, then LayerNormalization (with a beta) before a third: two sites whose scale and beta are
    divided, never the bias."""
    rng = np.random.default_rng(1)
    gamma = np.ones(64, np.float32)
    gamma[9] = 30.0
    inits = {"gamma": gamma, "bias": rng.standard_normal(64).astype(np.float32),
             "ln_gamma": gamma[::-1].copy(), "ln_beta": rng.standard_normal(64).astype(np.float32),
             **{f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) * 0.1 for i in range(3)}}
    nodes = [helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"],
                              ["normed", "", "", "residual"], domain="com.microsoft", epsilon=1e-5, name="skip_norm"),
             helper.make_node("MatMul", ["normed", "w0"], ["a"], name="a"),
             helper.make_node("MatMul", ["normed", "w1"], ["b"], name="b"),
             helper.make_node("Add", ["a", "b"], ["ab"]),
             helper.make_node("Add", ["ab", "residual"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "ln_gamma", "ln_beta"], ["h_normed"], axis=-1,
                              name="layer_norm"),
             helper.make_node("MatMul", ["h_normed", "w2"], ["y"], name="c")]
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "S", 64]) for n in ("x", "skip", "y", "residual")]
    graph = helper.make_graph(nodes, "fused", values[:2], values[2:],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                                 helper.make_opsetid("com.microsoft", 1)]))


def test_fused_norms_are_scaled_through_their_scale_and_beta_only(tmp_path: Path) -> None:
    model = _fused_norms()
    bias = model.graph.initializers["bias"].const_value.numpy().copy()
    path = tmp_path / "fused.onnx"
    ir.save(model, path)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 40, 64)).astype(np.float32),
              "skip": rng.standard_normal((1, 40, 64)).astype(np.float32)}]
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    before = session.run(None, feeds[0])
    records = equalize_inputs(model, path, {"a", "b", "c"}, feeds, 8, 32, True, True)
    assert [r["scaled_by"] for r in records] == ["skip_norm", "layer_norm"] and records[0]["alpha"] > 0
    np.testing.assert_array_equal(model.graph.initializers["bias"].const_value.numpy(), bias)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    for after, expected in zip(session.run(None, feeds[0]), before):  # y and the residual sum alike
        np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)


def test_a_shared_scale_is_copied_for_the_site_it_serves(tmp_path: Path) -> None:
    """An exporter stores identical norm scales once; dividing it for one site must not move the others."""
    rng = np.random.default_rng(3)
    gamma = np.ones(64, np.float32)
    gamma[5] = 30.0
    model = _gated_mlp(gamma, _outlier_weights(rng))
    other = ir.node("Mul", [model.graph.inputs[0], model.graph.initializers["gamma"]], name="elsewhere")
    model.graph.append(other)
    model.graph.outputs.append(other.outputs[0])
    other.outputs[0].name = "elsewhere_out"
    path = tmp_path / "mlp.onnx"
    ir.save(model, path)
    feeds = [{"x": rng.standard_normal((1, 32, 64)).astype(np.float32)}]
    equalize_inputs(model, path, {"gate", "up", "down"}, feeds, 4, 32, True, True)
    np.testing.assert_array_equal(model.graph.initializers["gamma"].const_value.numpy(), gamma)
    norm = next(n for n in model.graph if n.name == "norm_scale")
    assert norm.inputs[1].name != "gamma" and norm.inputs[1].const_value.numpy()[5] < 30.0


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_the_emulated_rounding_is_the_quantizers(bits: int, symmetric: bool) -> None:
    """x @ round_blocks(W) against MatMulNBits as onnxruntime's quantizer writes it, computed in fp32
    (accuracy level 0): the scaling is chosen for the weights the model will hold."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    rng = np.random.default_rng(4)
    weight = rng.standard_normal((64, 24)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 24])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, accuracy_level=0, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=symmetric, accuracy_level=0,
                                     algo_config=config)
    quantizer.process()
    x = rng.standard_normal((5, 64)).astype(np.float32)
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
