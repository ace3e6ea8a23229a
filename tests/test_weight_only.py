"""Weight-only 4- and 8-bit (MatMulNBits): what is written, how it is measured, and bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli
from attnopt.passes.precision.accuracy import measure

import graphs


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """A tiny Qwen2 causal LM with a KV cache (hidden 64: blocks of 16, 32 and 64 divide it)."""
    folder = tmp_path_factory.mktemp("weights")
    return attnopt.export("qwen2-tiny", folder / "model.onnx", verify=False).path


def nbits(path: Path) -> Counter:
    model = onnx.load(str(path))
    return Counter(next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node
                   if n.op_type == "MatMulNBits")


def test_int4_and_int8_weights(decoder: Path, tmp_path: Path) -> None:
    graph = onnx.load(str(decoder)).graph
    weights = {i.name for i in graph.initializer}
    transposed = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights}
    matmuls = sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights | transposed)
    assert any(n.op_type == "MatMul" and n.input[1] in transposed for n in graph.node), "qwen2-tiny ties its LM head"
    results = {}
    for precision, bits, head in (("int8-weights", 8, 8), ("int4", 4, 8), ("int4", 4, 4)):
        out = tmp_path / f"{precision}-{head}" / "model.onnx"  # a decoder folder each
        result = attnopt.quantize(decoder, out, precision=precision, accuracy_aware=False, keep_failed=True,
                                  lm_head_bits=head)
        report = result.report
        # every weight MatMul becomes MatMulNBits at its bits; int4's LM head at 8 bits unless asked for 4
        assert nbits(out) == Counter({bits: matmuls - 1}) + Counter({head: 1})
        assert report["weights"] == {"block_size": 32, "symmetric": True, "algorithm": "rtn", "accuracy_level": 4,
                                     "lm_head_bits": head if precision == "int4" else 8}
        if bits < head:
            (lm_head,) = report["kept"]
            assert lm_head["node"].startswith("LM head") and "held at 8 bits" in lm_head["reason"]
        assert report["size"]["ratio"] < (0.4 if bits == 4 else 0.5)
        acc = report["accuracy"]
        assert 0.0 <= acc["kl"] < 1.0 and 0.0 <= acc["top1"] <= 1.0 and acc["perplexity"] > 1.0
        results[precision, head] = acc
    # 8-bit weights stay closer to fp32 than 4-bit ones on the same inputs
    assert results["int8-weights", 8]["kl"] < results["int4", 4]["kl"]
    assert results["int8-weights", 8]["token_cosine"] > results["int4", 4]["token_cosine"]


def test_accuracy_aware_int4_falls_back_to_8_bits(decoder: Path, tmp_path: Path) -> None:
    full = attnopt.quantize(decoder, tmp_path / "full" / "model.onnx", precision="int4", accuracy_aware=False,
                            keep_failed=True).report["accuracy"]["token_cosine"]
    wanted = 1 - (1 - full) / 3  # a third of the full-int4 error: some groups must go back to 8 bits
    result = attnopt.quantize(decoder, tmp_path / "aware" / "model.onnx", precision="int4",
                              tolerance={"cosine": wanted, "top1": 0.0, "kl": 10.0})
    assert result.passed and result.report["accuracy"]["token_cosine"] >= wanted
    held = result.report["kept"]
    assert held and all("held at 8 bits" in k["reason"] for k in held)
    bits = nbits(tmp_path / "aware" / "model.onnx")
    assert bits[4] and bits[8], bits


def test_hqq_is_written_for_the_fast_kernel(tmp_path: Path) -> None:
    """HQQ's scales with integer (uint8) zero points in round-to-nearest's asymmetric layout, at accuracy level 4:
    the layout ONNX Runtime's fast CPU kernel runs (float zero points fall back to an fp32 path ~13x slower)."""
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort

    from attnopt.passes.precision.weight_only import WeightOptions, hqq_blocks, quantize_weights

    rng = np.random.default_rng(0)
    k, n = 96, 10
    weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])],
                              [numpy_helper.from_array(weight, "W")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), src)
    x = rng.standard_normal((4, k)).astype(np.float32)
    errors = {}
    for algorithm in ("hqq", "rtn"):
        out = tmp_path / f"{algorithm}.onnx"
        quantize_weights(src, out, {"mm": 4}, WeightOptions(32, False, algorithm, accuracy_level=0))
        model = onnx.load(str(out))
        node = model.graph.node[0]
        assert node.op_type == "MatMulNBits" and len(node.input) == 4
        zero_points = next(i for i in model.graph.initializer if i.name == node.input[3])
        assert zero_points.data_type == TensorProto.UINT8
        y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        errors[algorithm] = float(np.abs(y - x @ weight).mean())
        if algorithm == "hqq":  # the kernel reads HQQ's codes, scales and zero points as hqq_blocks wrote them
            packed, scales, zeros, offsets = hqq_blocks(weight, 32)
            codes = np.stack([packed & 15, packed >> 4], -1).reshape(n, k // 32, 32)
            zero = np.stack([zeros & 15, zeros >> 4], -1).reshape(n, -1)[:, :k // 32, None]
            dequantized = ((codes - zero.astype(np.float32)) * scales[..., None]).reshape(n, k).T
            dequantized += np.repeat(offsets, 32, axis=0)  # the part of HQQ's real zero point a uint8 cannot hold
            np.testing.assert_allclose(y, x @ dequantized, atol=1e-5)
    assert errors["hqq"] < errors["rtn"], errors


def test_hqq_int4_model_runs_at_accuracy_level_4(decoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "hqq.onnx"
    report = attnopt.quantize(decoder, out, precision="int4", method="hqq", accuracy_aware=False,
                              keep_failed=True).report
    assert report["weights"]["algorithm"] == "hqq" and report["weights"]["accuracy_level"] == 4
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        assert next(a.i for a in node.attribute if a.name == "accuracy_level") == 4
        assert len(node.input) == 4 and inits[node.input[3]].data_type == onnx.TensorProto.UINT8


def test_kl_and_perplexity_are_measured_on_real_next_tokens() -> None:
    ids = np.array([[1, 2, 3, 4]])
    logits = np.full((1, 4, 6), -10.0)
    for t in range(3):
        logits[0, t, ids[0, t + 1]] = 10.0  # fp32 predicts each next token surely
    feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids)}]
    same = measure([{"logits": logits}], [{"logits": logits}], feeds)
    assert same.kl == pytest.approx(0.0, abs=1e-9) and same.perplexity == pytest.approx(1.0, abs=1e-6)
    wrong = logits.copy()
    wrong[0, 0] = wrong[0, 0, ::-1]
    worse = measure([{"logits": logits}], [{"logits": wrong}], feeds)
    assert worse.kl > 1.0 and worse.perplexity > same.perplexity and worse.top1 == 0.75


@pytest.mark.parametrize("args, message", [
    (["--precision", "int4", "--block-size", "48"], "block size 48 is not supported"),
    (["--precision", "int4", "--method", "static"], "unknown int4 method 'static'"),
    (["--precision", "int4", "--lm-head-bits", "2"], "Invalid value for '--lm-head-bits'"),
])
def test_bad_weight_options(decoder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "bad.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(decoder), "-o", str(out), *args])
    assert result.exit_code == 2 and message in result.stderr and not out.exists()


def test_block_size_must_divide_the_weights(tmp_path: Path) -> None:
    src = tmp_path / "linear.onnx"
    onnx.save(graphs.parse(graphs.LINEAR_48, 22), src)
    result = CliRunner().invoke(cli, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--precision", "int4"])
    assert result.exit_code == 2, result.stderr
    assert "block size 32 does not divide the inner dimension 48" in result.stderr and "16" in result.stderr


def test_no_weights_and_already_quantized(decoder: Path, tmp_path: Path) -> None:
    src = tmp_path / "no-weights.onnx"
    onnx.save(graphs.parse(graphs.ATTENTION_DIV_ADDMASK, 22), src)
    result = CliRunner().invoke(cli, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--precision", "int4"])
    assert result.exit_code == 2 and "nothing to do" in result.stderr
    once = tmp_path / "once" / "model.onnx"
    attnopt.quantize(decoder, once, precision="int8-weights", accuracy_aware=False, keep_failed=True)
    again = CliRunner().invoke(cli, ["quantize", str(once), "-o", str(tmp_path / "twice" / "model.onnx"), "--precision", "int4"])
    assert again.exit_code == 2 and "already int8-weights" in again.stderr


def test_int4_that_no_selection_can_meet_fails_with_the_best_reached(decoder: Path, tmp_path: Path) -> None:
    """int4 holds its sensitive layers at 8 bits, not fp32: when even every layer at 8 bits misses the
    tolerance, that is a failure measured on the 8-bit model, never a pass."""
    out = tmp_path / "never.onnx"
    result = attnopt.quantize(decoder, out, precision="int4", tolerance={"cosine": 0.9999999})
    assert not result.passed and result.path is None and not out.exists()
    assert result.report["accuracy"]["token_cosine"] < 0.9999999 and "cosine" in result.report["failure"]
