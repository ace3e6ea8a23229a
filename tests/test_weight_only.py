"""Weight-only 4- and 8-bit (MatMulNBits): what is written, how it is measured, and bad input."""

from __future__ import annotations

import json
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
    tables = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in weights}
    results = {}
    for precision, bits, head in (("int8-weights", 8, 8), ("int4", 4, 8), ("int4", 4, 4)):
        out = tmp_path / f"{precision}-{head}" / "model.onnx"  # a decoder folder each
        result = attnopt.quantize(decoder, out, precision=precision, accuracy_aware=False, keep_failed=True,
                                  lm_head_bits=head)
        report = result.report
        # every weight MatMul becomes MatMulNBits at its bits; int4's LM head at 4 bits unless pinned at 8
        assert nbits(out) == Counter({bits: matmuls - 1}) + Counter({head: 1})
        # the defaults: int4 compensates symmetric blocks (gptq), with zero points only where the accuracy-aware
        # search needs them (not here); int8-weights rounds symmetric ones
        int4 = precision == "int4"
        assert report["weights"] == {"block_size": 32, "symmetric": True, "algorithm": "gptq" if int4 else "rtn",
                                     "accuracy_level": 4, "lm_head_bits": head if int4 else 8,
                                     "shared_embedding": True, "equalize": not int4, "zero_points_where_needed": False}
        assert not [n for n in onnx.load(str(out), load_external_data=False).graph.node
                    if n.op_type == "MatMulNBits" and len(n.input) > 3 and n.input[3]], "a zero point was written"
        # rtn scales activations first: per layer the two norms and the gated product (not the tied LM head)
        assert len(report["equalized"]) == (0 if int4 else 6)
        # the tied embedding reads quantized blocks (gptq's int4: 8-bit ones of its own): no fp32 table is left
        quantized = onnx.load(str(out)).graph
        assert [n.op_type for n in quantized.node].count("GatherBlockQuantized") == 1
        assert not tables & {i.name for i in quantized.initializer}, "the fp32 table is left"
        assert any("GatherBlockQuantized" in note for note in report["notes"])
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


def _zero_pointed(path: Path) -> set[str]:
    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node
            if n.op_type == "MatMulNBits" and len(n.input) > 3 and n.input[3]}


def test_int4_gives_zero_points_where_symmetric_blocks_miss(decoder: Path, tmp_path: Path) -> None:
    """int4's default: symmetric blocks; where they miss the tolerance, the most sensitive groups get a zero
    point per block (still 4 bits, a layer at a time) before any group is held at 8 bits."""
    cosine = {symmetric: attnopt.quantize(decoder, tmp_path / f"uniform-{symmetric}" / "model.onnx", precision="int4",
                                          symmetric=symmetric, accuracy_aware=False, keep_failed=True
                                          ).report["accuracy"]["token_cosine"] for symmetric in (True, False)}
    assert cosine[False] > cosine[True]
    wanted = (cosine[True] + cosine[False]) / 2  # between: some groups need zero points, not all
    out = tmp_path / "ladder" / "model.onnx"
    result = attnopt.quantize(decoder, out, precision="int4", tolerance={"cosine": wanted, "top1": 0.0, "kl": 10.0})
    assert result.passed and result.report["accuracy"]["token_cosine"] >= wanted
    assert result.report["kept"] and all("zero point" in k["reason"] for k in result.report["kept"])
    matmuls = sum(nbits(out).values())
    assert nbits(out) == Counter({4: matmuls}), "a group went to 8 bits"
    assert 0 < len(_zero_pointed(out)) < matmuls
    assert any("zero point" in note for note in result.report["notes"])
    layers = result.report["layers"]  # zero-pointed layers are still 4-bit: every MatMul counts as quantized
    assert layers["quantized"] == layers["candidates"] and layers["zero_points"] == len(_zero_pointed(out))


def test_accuracy_aware_int4_falls_back_to_8_bits(decoder: Path, tmp_path: Path) -> None:
    full = attnopt.quantize(decoder, tmp_path / "full" / "model.onnx", precision="int4", accuracy_aware=False,
                            symmetric=False, keep_failed=True).report["accuracy"]["token_cosine"]
    wanted = 1 - (1 - full) / 3  # a third of the zero-pointed int4 error: some groups must go back to 8 bits
    # the default tries zero points first; they cannot reach this, so it starts again from zero points everywhere
    result = attnopt.quantize(decoder, tmp_path / "aware" / "model.onnx", precision="int4",
                              tolerance={"cosine": wanted, "top1": 0.0, "kl": 10.0})
    assert result.passed and result.report["accuracy"]["token_cosine"] >= wanted
    assert result.report["weights"]["symmetric"] is False and any("searched again" in n for n in result.report["notes"])
    assert result.report["layers"]["zero_points"] == 0
    held = result.report["kept"]
    assert held and all("held at 8 bits" in k["reason"] for k in held)
    bits = nbits(tmp_path / "aware" / "model.onnx")
    assert bits[4] and bits[8], bits


def _single_matmul(tmp_path: Path, weight: np.ndarray) -> Path:
    """A graph of one MatMul x (4, K) @ W (K, N), saved as tmp_path/mm.onnx."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])],
                              [numpy_helper.from_array(weight, "W")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), src)
    return src


@pytest.mark.parametrize("bits, symmetric, copied, method", [
    (4, True, False, "rtn"), (8, True, False, "rtn"), (4, False, False, "rtn"), (8, False, False, "rtn"),
    (4, True, True, "rtn"), (4, False, False, "hqq")])
def test_tied_embedding_reads_the_quantized_lm_head(tmp_path: Path, bits: int, symmetric: bool, copied: bool,
                                                    method: str) -> None:
    """Gather(table, ids) and a LM head MatMul(h, Transpose(table)), or (`copied`, as TorchScript writes it) on a
    second constant holding the table transposed: once the head is MatMulNBits, each token's embedding is exactly
    the dequantized head weight's row (GatherBlockQuantized on the same blocks, zero points included) and the
    fp32 table is gone. A head whose codes were fitted to its inputs (hqq here, gptq and mse alike) serves the
    embedding 8-bit round to nearest blocks of the same table instead."""
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from attnopt.passes.precision.weight_only import (WeightOptions, materialize_transposed_weights,
                                                      quantize_weights)

    vocab, hidden = 40, 96  # 3 blocks a row: an odd count, where 4-bit zero points pad a nibble
    table = (np.random.default_rng(7).standard_normal((vocab, hidden)) * 0.1).astype(np.float32)
    head = [] if copied else [helper.make_node("Transpose", ["table"], ["table_t"], name="transpose", perm=[1, 0])]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embedding"), *head,
         helper.make_node("MatMul", ["h", "table_t"], ["logits"], name="lm_head")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [hidden, hidden])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, [1, 3, hidden]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [hidden, vocab])],
        [numpy_helper.from_array(table, "table")] + ([numpy_helper.from_array(table.T.copy(), "table_t")] if copied
                                                     else []))
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    tied = materialize_transposed_weights(model)
    assert tied == {"lm_head": "table"}
    src, out = tmp_path / "tied.onnx", tmp_path / "shared.onnx"
    ir.save(model, src)
    shared = quantize_weights(src, out, {"lm_head": bits}, WeightOptions(32, symmetric, method, accuracy_level=0),
                              tied=tied)
    ids = np.array([[3, 0, 39]], np.int64)
    embedded, head = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids, "h": np.eye(hidden, dtype=np.float32)})  # identity in: the head's dequantized weight out
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert np.abs(head.T - table).max() > 1e-4  # quantized
    assert shared == ["table"] and "GatherBlockQuantized" in ops and "Gather" not in ops
    assert not {"table", "table_t"} & {i.name for i in onnx.load(str(out)).graph.initializer}
    if method == "rtn":
        np.testing.assert_allclose(embedded[0], head.T[ids[0]], atol=1e-6)
    else:  # 8-bit round to nearest's rows, not the head's fitted ones
        nearest = tmp_path / "nearest.onnx"
        quantize_weights(src, nearest, {"lm_head": 8}, WeightOptions(32, symmetric, "rtn", accuracy_level=0),
                         tied=tied)
        rows, _ = ort.InferenceSession(str(nearest), providers=["CPUExecutionProvider"]).run(
            None, {"ids": ids, "h": np.eye(hidden, dtype=np.float32)})
        np.testing.assert_array_equal(embedded, rows)
        assert np.abs(embedded[0] - head.T[ids[0]]).max() > 1e-6


def test_hqq_is_written_for_the_fast_kernel(tmp_path: Path) -> None:
    """HQQ's scales with integer (uint8) zero points in round-to-nearest's asymmetric layout, at accuracy level 4:
    the layout ONNX Runtime's fast CPU kernel runs (float zero points fall back to an fp32 path ~13x slower)."""
    from onnx import TensorProto
    import onnxruntime as ort

    from attnopt.passes.precision.weight_only import WeightOptions, hqq_blocks, quantize_weights

    rng = np.random.default_rng(0)
    k, n = 96, 10
    weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    src = _single_matmul(tmp_path, weight)
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
    (["--precision", "int8-weights", "--method", "mse"], "mse quantizes to 4 bits only"),
    (["--precision", "int8-weights", "--method", "gptq"], "gptq quantizes to 4 bits only"),
    (["--precision", "int4", "--method", "awq"], "Invalid value for '--method'"),
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


def test_weights_in_external_data_and_equalize_off(decoder: Path, tmp_path: Path) -> None:
    """A model whose weights lie in an external file of its own name quantizes (the working copy is saved with its
    weights: it once kept pointers relative to the scratch folder); --no-equalize leaves the scaling out."""
    import shutil

    import onnx_ir as ir

    source = tmp_path / "source"
    shutil.copytree(decoder.parent, source)
    model = ir.load(source / decoder.name)
    ir.save(model, source / "staged.onnx", external_data="weights.bin")
    del model
    (source / "staged.onnx").replace(source / decoder.name)
    assert (source / "weights.bin").stat().st_size > 100_000
    out = tmp_path / "out" / "model.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(source / decoder.name), "-o", str(out), "--precision",
                                      "int8-weights", "--no-accuracy-aware", "--no-equalize", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["weights"]["equalize"] is False and report["equalized"] == []
    assert nbits(out) and (source / "weights.bin").exists()


def test_int4_that_no_selection_can_meet_fails_with_the_best_reached(decoder: Path, tmp_path: Path) -> None:
    """int4 holds its sensitive layers at 8 bits, not fp32: when even every layer at 8 bits misses the
    tolerance, that is a failure measured on the 8-bit model, never a pass."""
    out = tmp_path / "never.onnx"
    result = attnopt.quantize(decoder, out, precision="int4", tolerance={"cosine": 0.9999999})
    assert not result.passed and result.path is None and not out.exists()
    assert result.report["accuracy"]["token_cosine"] < 0.9999999 and "cosine" in result.report["failure"]


def _rtn(weight: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round to nearest, as onnxruntime's quantizer does it: symmetric puts the largest magnitude on -8,
    asymmetric spans [min(w, 0), max(w, 0)] with 16 levels."""
    k, n = weight.shape
    w = np.ascontiguousarray(weight.T).reshape(n, k // 32, 32)
    if symmetric:
        peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
        scales, zeros = (peak / -8).astype(np.float32), np.full(peak.shape, 8.0)
    else:
        lo, hi = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
        scales = ((hi - lo) / 15).astype(np.float32)
        zeros = np.clip(np.rint(-lo / scales), 0, 15)
    codes = np.clip(np.rint(w / scales[..., None]) + zeros[..., None], 0, 15).astype(np.uint8)
    return codes, scales, None if symmetric else zeros.astype(np.uint8)


def test_mse_codes_beat_round_to_nearest_where_the_input_matters() -> None:
    """The importance-weighted error of the searched blocks is well below round-to-nearest's, symmetric and
    asymmetric, with importance skewed over a few channels as real activations are; and it weighs by
    importance: searched without it, the weighted error is higher."""
    from attnopt.passes.precision.weight_search import search_blocks, weighted_error

    rng = np.random.default_rng(1)
    k, n = 256, 48
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    weight[rng.integers(0, k, 8)] *= 6  # a few heavy input rows, as in real projections
    importance = rng.lognormal(0.0, 2.0, k).astype(np.float32)
    for symmetric in (True, False):
        rtn = weighted_error(weight, importance, 32, *_rtn(weight, symmetric))
        searched = weighted_error(weight, importance, 32, *search_blocks(weight, importance, 32, symmetric))
        blind = weighted_error(weight, importance, 32, *search_blocks(weight, None, 32, symmetric))
        assert searched < 0.8 * rtn, (symmetric, searched, rtn)
        assert searched < blind, (symmetric, searched, blind)
    # asymmetric has a zero point to place: it beats symmetric round-to-nearest by more
    assert weighted_error(weight, importance, 32, *search_blocks(weight, importance, 32, False)) < \
        weighted_error(weight, importance, 32, *search_blocks(weight, importance, 32, True))


def test_mse_blocks_are_exact_where_the_grid_holds_them() -> None:
    """A zero block stays zero, a block already on a 16-level grid that includes 0 is reproduced, and the
    codes, scales and zero points are in range."""
    from attnopt.passes.precision.weight_search import dequantize, search_blocks

    rng = np.random.default_rng(2)
    weight = np.zeros((64, 3), np.float32)
    weight[32:, 1] = (rng.integers(0, 16, 32) - 5) * 0.125  # codes 0..15 around a zero point of 5
    weight[32:, 2] = 0.3  # one value: code 15 above a zero point of 0
    codes, scales, zeros = search_blocks(weight, None, 32, symmetric=False)
    assert codes.dtype == np.uint8 and codes.max() <= 15 and zeros.max() <= 15 and np.all(np.isfinite(scales))
    np.testing.assert_allclose(dequantize(codes, scales, zeros), weight, atol=1e-6)


@pytest.mark.parametrize("method", ["mse", "gptq"])
def test_searched_blocks_are_written_as_plain_matmulnbits(tmp_path: Path, method: str) -> None:
    """The searched (mse) or compensated (gptq) codes, scales and zero points go into the quantizer's own
    MatMulNBits (no other op), and onnxruntime's kernel computes x @ the dequantized weight exactly, symmetric
    (no zero points) or not."""
    import onnxruntime as ort

    from attnopt.passes.precision.gptq import gptq_blocks
    from attnopt.passes.precision.weight_only import WeightOptions, quantize_weights
    from attnopt.passes.precision.weight_search import dequantize, search_blocks

    rng = np.random.default_rng(3)
    k, n = 96, 10
    weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    x = rng.standard_normal((4, k)).astype(np.float32)
    seen = rng.standard_normal((64, k)).astype(np.float32) * rng.lognormal(0.0, 1.0, k).astype(np.float32)
    statistic = seen.T @ seen / len(seen) if method == "gptq" else (seen ** 2).mean(0)
    src = _single_matmul(tmp_path, weight)
    for symmetric in (False, True):
        out = tmp_path / f"{method}-{symmetric}.onnx"
        memo: dict = {}
        quantize_weights(src, out, {"mm": 4}, WeightOptions(32, symmetric, method, accuracy_level=0),
                         {"mm": statistic}, memo)
        # the parsed source and each node once (the quantizer's layout, the searched blocks) for later trials;
        # the trial worked on a copy: the cached source still holds the fp32 MatMul
        assert set(memo) == {("source", str(src)), ("shell", str(src)), ("mm", method, 32, symmetric),
                             ("rtn", "mm", 4, 32, symmetric, 0)}
        assert not memo["shell", str(src)].graph.initializer  # trials copy the graph, not the fp32 weights
        assert [node.op_type for node in memo["source", str(src)].graph.node] == ["MatMul"]
        model = onnx.load(str(out))
        (node,) = model.graph.node
        assert node.op_type == "MatMulNBits" and len(node.input) == (3 if symmetric else 4)
        y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        blocks = (gptq_blocks if method == "gptq" else search_blocks)(weight, statistic, 32, symmetric)
        np.testing.assert_allclose(y, x @ dequantize(*blocks), atol=1e-5)
        assert np.abs(y - x @ weight).max() > 1e-3  # it is quantized


def _correlated_layer(seed: int, k: int = 192, n: int = 96, tokens: int = 1500):
    """A weight and two samples of one correlated, unevenly scaled input distribution (calibration, held out)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    scale = rng.lognormal(0.0, 1.0, k).astype(np.float32)
    seen, held_out = ((rng.standard_normal((tokens, k)).astype(np.float32) @ mix) * scale for _ in range(2))
    return (rng.standard_normal((k, n)) * 0.05).astype(np.float32), seen, held_out


def test_gptq_keeps_the_layer_output_closer_than_mse() -> None:
    """GPTQ minimises the error of x W, not of W: on held-out inputs of the calibration's distribution, its
    output error is below the importance-weighted search's (the same block scales' search, without the
    compensation), symmetric or not."""
    from attnopt.passes.precision.gptq import gptq_blocks
    from attnopt.passes.precision.weight_search import dequantize, search_blocks

    weight, seen, held_out = _correlated_layer(5)
    second_moment = seen.T @ seen / len(seen)

    def output_error(blocks) -> float:
        return float(np.linalg.norm(held_out @ (dequantize(*blocks) - weight)) / np.linalg.norm(held_out @ weight))

    for symmetric in (True, False):
        compensated = output_error(gptq_blocks(weight, second_moment, 32, symmetric))
        searched = output_error(search_blocks(weight, np.diag(second_moment), 32, symmetric))
        assert compensated < 0.92 * searched, (symmetric, compensated, searched)


def test_gptq_zeroes_inputs_never_seen() -> None:
    """An input channel that is zero on every calibration token (H's row and column zero) cannot be
    inverted: its weight row is quantized as zero and the rest is finite."""
    from attnopt.passes.precision.gptq import gptq_blocks
    from attnopt.passes.precision.weight_search import dequantize

    weight, seen, _ = _correlated_layer(6, k=64, n=16)
    seen[:, 5] = 0
    blocks = gptq_blocks(weight, seen.T @ seen / len(seen), 32, symmetric=True)
    dequantized = dequantize(*blocks)
    assert np.all(np.isfinite(dequantized)) and np.all(dequantized[5] == 0)
    with pytest.raises(ValueError, match="second moment"):
        gptq_blocks(weight, np.eye(32, dtype=np.float32), 32, symmetric=True)


def test_input_importance_is_the_mean_square_of_real_tokens(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from attnopt.passes.precision.weight_search import input_importance

    rng = np.random.default_rng(4)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Mul", ["h", "two"], ["x"], name="double"),
                               helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 3, 8]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
                              [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.float32(2), "two")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), src)
    h = rng.standard_normal((2, 3, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1], [0, 1, 1]], np.int64)  # the second sentence's first token is padding
    (importance,) = input_importance(src, ["mm"], [{"h": h, "attention_mask": mask}]).values()
    real = (2 * h)[mask > 0]
    np.testing.assert_allclose(importance, (real ** 2).mean(0), rtol=1e-5)
    (second_moment,) = input_importance(src, ["mm"], [{"h": h, "attention_mask": mask}], second_moment=True).values()
    np.testing.assert_allclose(second_moment, real.T @ real / len(real), rtol=1e-5, atol=1e-6)


def test_searched_int4_decoder(decoder: Path, tmp_path: Path) -> None:
    """On a decoder, mse and gptq write every weight MatMul as MatMulNBits and nothing else, and their next-token
    distributions are closer to fp32's than round-to-nearest's on the same calibration inputs."""
    kl = {}
    for method in ("rtn", "mse", "gptq"):
        out = tmp_path / method / "model.onnx"
        # the embedding keeps its table: what is compared is the MatMuls' codes, not a tied table read from them
        report = attnopt.quantize(decoder, out, precision="int4", method=method, symmetric=False,
                                  accuracy_aware=False, keep_failed=True, lm_head_bits=4,
                                  shared_embedding=False).report
        assert report["weights"]["algorithm"] == method
        ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
        kl[method] = report["accuracy"]["kl"], ops
    assert kl["mse"][1] == kl["rtn"][1] == kl["gptq"][1]  # the same ops
    assert kl["mse"][0] < kl["rtn"][0] and kl["gptq"][0] < kl["rtn"][0], kl


def test_gptq_factor_is_the_inverse_second_moments_upper_factor() -> None:
    """U is upper triangular with U^T U = H^-1 (H damped; a channel never active gets H = 1 and a zero row),
    and a pass's cache gives the next weight reading the same tensor the same codes as a fresh factorisation."""
    from attnopt.passes.precision.gptq import DAMPING, FactorCache, _inverse_factor, gptq_blocks

    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 64)) * rng.uniform(0.1, 2.0, 64)
    x[:, 3] = 0
    h = (x.T @ x / 100).astype(np.float32)
    upper, dead = _inverse_factor(h, DAMPING)
    damped = np.array(h, np.float64)
    damped[3, 3] = 1.0
    damped += np.eye(64) * DAMPING * np.mean(np.diag(damped))
    assert np.allclose(upper, np.triu(upper)) and np.all(np.diag(upper) > 0) and list(np.nonzero(dead)[0]) == [3]
    np.testing.assert_allclose(upper.T.astype(np.float64) @ upper, np.linalg.inv(damped), rtol=1e-4, atol=1e-6)
    cache = FactorCache()
    for n in (16, 8):  # two weights reading one tensor (Q and K)
        w = rng.standard_normal((64, n)).astype(np.float32)
        cached, fresh = gptq_blocks(w, h, 32, True, factors=cache), gptq_blocks(w, h, 32, True)
        assert all(np.array_equal(a, b) for a, b in zip(cached[:2], fresh[:2]))
    assert cache.source[0] is h



def test_a_weight_another_matmul_reads_stays_fp32_there(tmp_path: Path) -> None:
    """Trials copy only the initializers they keep: a weight read by a MatMul left in fp32 as well as by a
    quantized one stays in the model for the fp32 reader, and one only the quantized MatMul read goes."""
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort

    from attnopt.passes.precision.weight_only import WeightOptions, quantize_weights

    rng = np.random.default_rng(0)
    shared, alone = (rng.standard_normal((64, 8)) * 0.05).astype(np.float32), \
        (rng.standard_normal((64, 8)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"], name="quantized"),
         helper.make_node("MatMul", ["x", "W"], ["b"], name="kept"),
         helper.make_node("MatMul", ["x", "V"], ["c"], name="alone")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 8]) for name in "abc"],
        [numpy_helper.from_array(shared, "W"), numpy_helper.from_array(alone, "V")])
    src, out = tmp_path / "shared.onnx", tmp_path / "out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), src)
    quantize_weights(src, out, {"quantized": 8, "alone": 8}, WeightOptions(32, True, "rtn", accuracy_level=0))
    model = onnx.load(str(out))
    assert {i.name for i in model.graph.initializer} & {"W", "V"} == {"W"}
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "MatMul", "MatMulNBits"]
    x = rng.standard_normal((4, 64)).astype(np.float32)
    a, b, c = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(b, x @ shared, rtol=1e-5, atol=1e-6)  # fp32, as it was
    np.testing.assert_allclose(a, x @ shared, atol=0.02)  # 8-bit blocks
    np.testing.assert_allclose(c, x @ alone, atol=0.02)
