"""Tier 1: each rule on tiny hand-written graphs: the ops after, numeric equality with the unfused graph
(ONNX Runtime, its own optimizations off), the full ONNX checker, and the reason for each rejection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

import attnopt
from attnopt.runtime import OrtRunner

import graphs


def optimize_graph(tmp_path: Path, text: str, target: str, opset: int = 22, **options):
    src = tmp_path / "in.onnx"
    onnx.save(graphs.parse(text, opset), src)
    out = tmp_path / f"out-{target}.onnx"
    result = attnopt.optimize(src, out, target=target, force=True, **options)
    return src, onnx.load(str(out)), result.report


def feeds_for(model: onnx.ModelProto, batch: int = 2, seq: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else (batch if d.dim_param == "B" else seq)
                for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
            keep = rng.random(dims) > 0.4
            keep[..., 0] = True  # every query sees at least one key
            feeds[value.name] = keep
        else:
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def assert_same_numbers(src: Path, optimized: onnx.ModelProto) -> None:
    reference = onnx.load(str(src))
    for batch, seq in ((1, 5), (3, 11)):
        feeds = feeds_for(reference, batch, seq)
        with OrtRunner(str(src), optimize=False) as a, OrtRunner(optimized.SerializeToString(), optimize=False) as b:
            want, got = a.infer(feeds), b.infer(feeds)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=2e-5, rtol=1e-4)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def check_full(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


ATTENTION_GRAPHS = ["ATTENTION_DIV_ADDMASK", "ATTENTION_SPLIT_SCALE_BOOLMASK", "ATTENTION_GQA", "ATTENTION_GQA_TILE_CONCAT"]
ATTENTION_OP = {"ort": "MultiHeadAttention", "onnx": "Attention", "trt": "Softmax"}


@pytest.mark.parametrize("target", ["ort", "onnx", "trt"])
@pytest.mark.parametrize("graph", ATTENTION_GRAPHS)
def test_attention_rules(tmp_path: Path, graph: str, target: str) -> None:
    src, out, report = optimize_graph(tmp_path, getattr(graphs, graph), target)
    att = report["fusions"]["attention"]
    assert (att["sites"], att["fused"], att["unfused"]) == (1, 1, [])
    counts = ops(out)
    assert counts[ATTENTION_OP[target]] == 1
    if target != "trt":
        assert counts["Softmax"] == 0 and counts["IsNaN"] == 0
    else:  # the TensorRT form: Q scaled, then MatMul(Q, Kᵀ), Softmax, MatMul(P, V); no guard, no Where
        assert counts["MatMul"] == 2 and counts["IsNaN"] == 0
        matmul = next(n for n in out.graph.node if n.op_type == "MatMul")
        producer = {o: n for n in out.graph.node for o in n.output}[matmul.input[0]]
        assert producer.op_type == "Mul", "the scale must be applied to Q before the first MatMul"
    check_full(out)
    assert_same_numbers(src, out)


def test_packed_qkv_attention(tmp_path: Path) -> None:
    """Three projections of one input become ONNX Runtime's Attention with one packed weight, and the
    exporter's head split and merge (Reshape/Transpose) disappear."""
    src, out, report = optimize_graph(tmp_path, graphs.ATTENTION_PROJECTIONS, "ort")
    assert report["fusions"]["attention"]["forms"] == {"Attention (packed QKV)": 1}
    counts = ops(out)
    assert counts["Attention"] == 1 and counts["MatMul"] == 0 and counts["Transpose"] == 0 and counts["Reshape"] == 0
    node = next(n for n in out.graph.node if n.op_type == "Attention")
    weights = {i.name: i for i in out.graph.initializer}[node.input[1]]
    assert node.domain == "com.microsoft" and list(weights.dims) == [8, 24]
    assert_same_numbers(src, out)


def test_attention_scale_is_exact(tmp_path: Path) -> None:
    """Split sqrt scales multiply back to one scale: 0.5946036² = 1/sqrt(8)."""
    _, out, _ = optimize_graph(tmp_path, graphs.ATTENTION_SPLIT_SCALE_BOOLMASK, "ort")
    mha = next(n for n in out.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == 2
    assert attrs["scale"] == pytest.approx(1 / np.sqrt(8), rel=1e-6)


def test_gqa_keeps_fewer_kv_heads_on_onnx(tmp_path: Path) -> None:
    _, out, _ = optimize_graph(tmp_path, graphs.ATTENTION_GQA, "onnx")
    assert ops(out)["Expand"] == 0, "the K/V repeat is absorbed by Attention's native grouped-query support"


@pytest.mark.parametrize(
    "graph, reason",
    [
        ("ATTENTION_PROBS_RETURNED", "used more than once"),
        ("ATTENTION_WRONG_AXIS", "not the key axis"),
    ],
)
def test_attention_rejections(tmp_path: Path, graph: str, reason: str) -> None:
    src, out, report = optimize_graph(tmp_path, getattr(graphs, graph), "ort")
    att = report["fusions"]["attention"]
    assert (att["sites"], att["fused"]) == (1, 0)
    assert reason in att["unfused"][0]["reason"]
    assert ops(out)["Softmax"] == 1
    assert_same_numbers(src, out)


@pytest.mark.parametrize("target, form", [("onnx", "ONNX Attention"), ("trt", "soft-cap (tanh)")])
def test_softcapped_attention(tmp_path: Path, target: str, form: str) -> None:
    """The cap goes into the fused op (ONNX Attention's softcap) or its decomposed form, applied before the
    mask as the model does; verification and the numbers here hold it to the model's outputs."""
    src, out, report = optimize_graph(tmp_path, graphs.ATTENTION_SOFTCAP, target, opset=23)
    att = report["fusions"]["attention"]
    assert (att["sites"], att["fused"]) == (1, 1) and any(form in f for f in att["forms"]), att
    assert_same_numbers(src, out)
    if target == "onnx":
        (node,) = [n for n in out.graph.node if n.op_type == "Attention"]
        assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["softcap"] == pytest.approx(5.0)


def test_softcapped_attention_rejections(tmp_path: Path) -> None:
    """ONNX Runtime's only capping kernel needs a KV cache; a mask inside the tanh is not a soft-cap."""
    src, out, report = optimize_graph(tmp_path, graphs.ATTENTION_SOFTCAP, "ort")
    assert "only GroupQueryAttention caps them" in report["fusions"]["attention"]["unfused"][0]["reason"]
    assert_same_numbers(src, out)
    (tmp_path / "inside").mkdir()
    _, _, report = optimize_graph(tmp_path / "inside", graphs.ATTENTION_SOFTCAP_MASK_INSIDE, "onnx", opset=23)
    assert "inside the soft-cap" in report["fusions"]["attention"]["unfused"][0]["reason"]


NORM_OP = {"ort": "LayerNormalization", "onnx": "LayerNormalization", "trt": "LayerNormalization"}


@pytest.mark.parametrize("target", ["ort", "onnx", "trt"])
@pytest.mark.parametrize("graph", ["LAYERNORM_POW_DIV", "LAYERNORM_MUL_RECIPROCAL"])
def test_layernorm_rules(tmp_path: Path, graph: str, target: str) -> None:
    src, out, report = optimize_graph(tmp_path, getattr(graphs, graph), target)
    ln = report["fusions"]["layernorm"]
    assert (ln["sites"], ln["fused"], ln["unfused"]) == (1, 1, [])
    assert ops(out)["LayerNormalization"] == 1 and ops(out)["ReduceMean"] == 0
    check_full(out)
    assert_same_numbers(src, out)


def test_layernorm_epsilon_is_kept(tmp_path: Path) -> None:
    _, out, _ = optimize_graph(tmp_path, graphs.LAYERNORM_POW_DIV, "onnx")
    node = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    eps = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon")
    assert eps == pytest.approx(1e-12)


def test_layernorm_rejection(tmp_path: Path) -> None:
    src, out, report = optimize_graph(tmp_path, graphs.LAYERNORM_WRONG_AXIS, "onnx")
    ln = report["fusions"]["layernorm"]
    assert (ln["sites"], ln["fused"]) == (1, 0)
    assert "not taken over the last axis" in ln["unfused"][0]["reason"]
    assert_same_numbers(src, out)


GELU_EXPECTED = {
    ("GELU_ERF_DIV", "ort"): "BiasGelu",
    ("GELU_ERF_DIV", "onnx"): "Gelu",
    ("GELU_ERF_MUL_HALF_FIRST", "ort"): "Gelu",
    ("GELU_ERF_MUL_HALF_FIRST", "trt"): "Gelu",
    ("GELU_TANH_POW", "ort"): "FastGelu",
    ("GELU_TANH_POW", "onnx"): "Gelu",
    ("GELU_TANH_POW", "trt"): "Gelu",
}


@pytest.mark.parametrize("graph, target", sorted(GELU_EXPECTED))
def test_gelu_rules(tmp_path: Path, graph: str, target: str) -> None:
    src, out, report = optimize_graph(tmp_path, getattr(graphs, graph), target)
    gelu = report["fusions"]["gelu"]
    assert (gelu["sites"], gelu["fused"], gelu["unfused"]) == (1, 1, [])
    counts = ops(out)
    assert counts[GELU_EXPECTED[graph, target]] == 1 and counts["Erf"] == 0 and counts["Tanh"] == 0
    if GELU_EXPECTED[graph, target] == "BiasGelu":
        assert counts["Add"] == 0, "the bias is folded into BiasGelu"
    if target != "ort":
        node = next(n for n in out.graph.node if n.op_type == "Gelu")
        approx = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "approximate")
        assert approx == (b"tanh" if "TANH" in graph else b"none")
        check_full(out)
    assert_same_numbers(src, out)


def test_gelu_rejection(tmp_path: Path) -> None:
    src, out, report = optimize_graph(tmp_path, graphs.GELU_WRONG_HALF, "ort")
    gelu = report["fusions"]["gelu"]
    assert (gelu["sites"], gelu["fused"]) == (1, 0)
    assert "0.5 * x" in gelu["unfused"][0]["reason"]
    assert_same_numbers(src, out)


@pytest.mark.parametrize("target, op", [("ort", "SimplifiedLayerNormalization"), ("onnx", "RMSNormalization"),
                                        ("trt", "RMSNormalization")])
@pytest.mark.parametrize("graph", ["RMSNORM_RECIPROCAL", "RMSNORM_DIV"])
def test_rmsnorm_rules(tmp_path: Path, graph: str, target: str, op: str) -> None:
    src, out, report = optimize_graph(tmp_path, getattr(graphs, graph), target)
    rms = report["fusions"]["rmsnorm"]
    assert (rms["sites"], rms["fused"], rms["unfused"]) == (1, 1, [])
    assert ops(out)[op] == 1 and ops(out)["ReduceMean"] == 0
    if target == "onnx":
        check_full(out)
    assert_same_numbers(src, out)


def test_rmsnorm_rejections(tmp_path: Path) -> None:
    src, out, report = optimize_graph(tmp_path, graphs.RMSNORM_NO_EPSILON, "ort")
    assert "no epsilon" in report["fusions"]["rmsnorm"]["unfused"][0]["reason"]
    assert_same_numbers(src, out)
    src, out, report = optimize_graph(tmp_path, graphs.RMSNORM_DIV, "trt", tensorrt_version="10.1")
    assert report["fusions"]["rmsnorm"]["unfused"][0]["reason"] == "TensorRT 10.1's ONNX parser has no RMSNormalization"
    assert ops(out)["ReduceMean"] == 1, "a refused site keeps the model's own ops"
    assert_same_numbers(src, out)


@pytest.mark.parametrize("target, op", [("ort", "RotaryEmbedding"), ("onnx", "RotaryEmbedding"),
                                        ("trt", "RotaryEmbedding")])
def test_rotary_rule(tmp_path: Path, target: str, op: str) -> None:
    src, out, report = optimize_graph(tmp_path, graphs.ROTARY_ROTATE_HALF, target)
    rot = report["fusions"]["rotary"]
    assert (rot["sites"], rot["fused"], rot["unfused"]) == (1, 1, [])
    counts = ops(out)
    assert counts[op] == 1 and counts["Neg"] == 0 and counts["Slice"] <= 2  # only the caches are sliced
    domain = next(n.domain for n in out.graph.node if n.op_type == op)
    assert domain == ("com.microsoft" if target == "ort" else "")
    if target == "onnx":
        check_full(out)
    assert_same_numbers(src, out)


def test_rotary_rejections(tmp_path: Path) -> None:
    src, out, report = optimize_graph(tmp_path, graphs.ROTARY_UNEVEN, "ort")
    assert "into halves" in report["fusions"]["rotary"]["unfused"][0]["reason"]
    assert_same_numbers(src, out)
    src, out, report = optimize_graph(tmp_path, graphs.ROTARY_OPAQUE_TABLES, "ort")
    assert "cannot prove" in report["fusions"]["rotary"]["unfused"][0]["reason"]
    assert_same_numbers(src, out)
    _, _, report = optimize_graph(tmp_path, graphs.ROTARY_ROTATE_HALF, "trt", tensorrt_version="10.1")
    assert report["fusions"]["rotary"]["unfused"][0]["reason"] == "TensorRT 10.1's ONNX parser has no RotaryEmbedding"


def test_lowering_vetoes_ops_the_opset_lacks() -> None:
    """A veto is asked before a canonical op is written: the reason names the op and both opsets."""
    import onnx_ir as ir

    from attnopt.passes.lower import lowering_for

    model = ir.serde.deserialize_model(graphs.parse(graphs.RMSNORM_DIV, 22))
    assert lowering_for("onnx").veto("RMSNormalization", {}, model) == "ONNX RMSNormalization needs opset 23; the model has 22"
    assert lowering_for("onnx").veto("Gelu", {}, model) == ""
    assert "head count or head size not static" in lowering_for("ort").veto(
        "Attention", {"q_num_heads": 0, "head_size": 8, "v_head_size": 8}, model)
    assert lowering_for("trt", "11.5").veto("RMSNormalization", {}, model) == \
        "RMSNormalization needs opset 23; the model has 22"
    assert lowering_for("trt", "11.5").opset_for(22) == 23 and lowering_for("trt", "10.1").opset_for(22) == 20


CACHED_ATTENTION_OP = {"ort": "GroupQueryAttention", "onnx": "Attention", "trt": "Softmax"}


@pytest.mark.parametrize("target", ["ort", "onnx", "trt"])
def test_attention_over_a_kv_cache(tmp_path: Path, target: str) -> None:
    """Concat(past, new) is taken into the fused op, which writes the present itself (ort, onnx); the
    causal mask over past + new keys with left padding holds at every verified shape (a chunk with a
    past, a decode step with more keys than the batch has tokens), on the real positions."""
    src = tmp_path / "in.onnx"
    onnx.save(graphs.cached_attention_model(masked=True), src)
    out_path = tmp_path / f"out-{target}.onnx"
    report = attnopt.optimize(src, out_path, target=target, force=True).report
    att = report["fusions"]["attention"]
    assert (att["sites"], att["fused"], att["unfused"]) == (1, 1, []), att
    assert report["verification"]["runs"] == 1
    out = onnx.load(str(out_path))
    check_full(out)
    producers = {o: n.op_type for n in out.graph.node for o in n.output}
    assert ops(out)[CACHED_ATTENTION_OP[target]] == 1
    presents = {producers[o.name] for o in out.graph.output if o.name.startswith("present.")}
    assert presents == ({"Concat"} if target == "trt" else {CACHED_ATTENTION_OP[target]})


def test_cached_attention_without_a_mask_is_not_group_query_attention(tmp_path: Path) -> None:
    """GroupQueryAttention masks causally over the cache: attention with no mask at all attends to
    every key, so it becomes MultiHeadAttention over Concat(past, new) instead."""
    src = tmp_path / "in.onnx"
    onnx.save(graphs.cached_attention_model(masked=False), src)
    out_path = tmp_path / "out.onnx"
    report = attnopt.optimize(src, out_path, target="ort", force=True).report
    assert report["fusions"]["attention"]["forms"] == {"MultiHeadAttention": 1}
    out = onnx.load(str(out_path))
    assert ops(out)["GroupQueryAttention"] == 0 and ops(out)["Concat"] == 2
