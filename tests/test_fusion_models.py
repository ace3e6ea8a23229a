"""Tier 2: the model zoo, both exporters, every target: exact fused counts, and the optimized model
still matches PyTorch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import attnopt
from attnopt.models import load_model
from attnopt.runtime import OrtRunner, TorchRunner

from conftest import TINY_PRESETS

#: sites per fusion kind: attention, layernorm, gelu, rmsnorm, rotary (one per query and per key)
EXPECTED = {
    "bert-tiny": (2, 5, 2, 0, 0),
    "minilm": (6, 13, 6, 0, 0),
    "gpt2-tiny": (2, 5, 2, 0, 0),
    "llama-tiny": (2, 0, 0, 5, 4),
    "vit-tiny": (2, 5, 2, 0, 0),
}
#: the ops a fused attention site is in the output graph, per target (trt: the Softmax of the form it fuses)
FUSED_ATTENTION_OPS = {"ort": ("MultiHeadAttention", "Attention"), "onnx": ("Attention",), "trt": ("Softmax",)}
KINDS = ("attention", "layernorm", "gelu", "rmsnorm", "rotary")


@pytest.fixture(scope="module")
def torch_models():
    cache: dict[str, object] = {}

    def get(preset: str):
        if preset not in cache:
            cache[preset] = load_model(preset)
        return cache[preset]

    return get


def assert_matches_pytorch(loaded, path) -> None:
    feed = {k: v.numpy() for k, v in loaded.make_inputs(3, 21, seed=5).items()}
    with OrtRunner(path) as ort_runner, TorchRunner(loaded.module, loaded.input_names, loaded.output_names) as ref:
        actual, expected = ort_runner.infer(feed), ref.infer(feed)
    for name in loaded.output_names:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("target", ["ort", "onnx", "trt"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_zoo_fuses_every_site(optimize_cache, torch_models, preset: str, exporter: str, target: str) -> None:
    result = optimize_cache(preset, exporter, target)  # the session's: other modules read it too
    out = result.path
    fusions = result.report["fusions"]
    assert result.ok and result.report["verification"]["runs"] == 1
    for kind, sites in zip(KINDS, EXPECTED[preset]):
        # trt: against the newest TensorRT table (none is installed), which reads RMSNorm and rotary
        assert fusions[kind]["fused"] == fusions[kind]["sites"] == sites, (kind, fusions[kind])
    # held-out check: the report agrees with the output graph, op for op
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert sum(ops[op] for op in FUSED_ATTENTION_OPS[target]) == fusions["attention"]["fused"] == EXPECTED[preset][0]
    forms = fusions["attention"]["forms"]
    if target == "ort":
        # self-attention over projections of one input (three of them, or GPT-2's one c_attn split three
        # ways) packs them into one GEMM; grouped-query Llama goes to MultiHeadAttention
        form = "MultiHeadAttention" if preset == "llama-tiny" else "Attention (packed QKV)"
        assert forms == {form: EXPECTED[preset][0]}
    elif target == "onnx":
        assert forms == {"ONNX Attention (opset 23)": EXPECTED[preset][0]}
    assert_matches_pytorch(torch_models(preset), out)


def test_opset_23_attention_ops_are_recognised(tmp_path, torch_models) -> None:
    """At opset 23 torch's exporter already writes ONNX Attention: counted as sites and lowered."""
    exported = attnopt.export("bert-tiny", tmp_path / "b23.onnx", opset=23)
    result = attnopt.optimize(exported.path, tmp_path / "b23.ort.onnx", target="ort")
    att = result.report["fusions"]["attention"]
    assert (att["sites"], att["already_fused"], att["fused"]) == (2, 2, 2)
    assert att["forms"] == {"Attention (packed QKV)": 2}
    assert_matches_pytorch(torch_models("bert-tiny"), tmp_path / "b23.ort.onnx")


def test_minilm_passes_are_recorded(optimize_cache) -> None:
    """Not a timing test: the report records per-pass seconds so the benchmark can read them, and
    verification ran once, on the result of all passes."""
    result = optimize_cache("minilm", "dynamo", "ort")
    passes = result.report["verification"]["passes"]
    assert [p["pass"] for p in passes] == ["cleanup", "recognise rotary", "recognise attention",
                                           "recognise layernorm", "recognise gelu", "recognise rmsnorm",
                                           "lower for ort", "shape reads", "reshape chains", "last logits",
                                           "tied weights"]
    # the passes after lowering have nothing to do on an encoder: their time may round to 0 ms
    assert all(p["seconds"] > 0 for p in passes[:-4]) and all(p["seconds"] >= 0 for p in passes[-4:])
    verification = result.report["verification"]
    assert (verification["verified"], verification["runs"], verification["rolled_back_sites"]) == (True, 1, {})
    onnx_target = optimize_cache("minilm", "dynamo", "onnx")
    assert onnx_target.report["verification"]["passes"][0]["pass"] == "opset"
    assert "from opset 22 to 23" in onnx_target.report["notes"][0]


def test_external_data_in_and_out(tmp_path, monkeypatch) -> None:
    """A model with external data (as above 2 GB) comes out with external data, and still runs."""
    monkeypatch.setattr("attnopt.exporter.EXTERNAL_DATA_THRESHOLD", 1_000_000)
    monkeypatch.setattr("attnopt.passes.model_files.EXTERNAL_DATA_THRESHOLD", 1_000_000)
    exported = attnopt.export("bert-tiny", tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    result = attnopt.optimize(exported.path, tmp_path / "big.ort.onnx", target="ort")
    data = tmp_path / "big.ort.onnx.data"
    assert data.is_file() and data.stat().st_size > (tmp_path / "big.ort.onnx").stat().st_size
    assert result.report["fusions"]["attention"]["fused"] == 2
    assert_matches_pytorch(load_model("bert-tiny"), tmp_path / "big.ort.onnx")


def test_opset_17_torchscript_export_upgrades_and_fuses(tmp_path, torch_models) -> None:
    """ReduceMean's axes moved from attribute to input at opset 18: the upgrade for the onnx target must
    convert them, or ONNX Runtime rejects the model and every opset-23 fusion is lost."""
    loaded = torch_models("llama-tiny")
    inputs = loaded.make_inputs(2, 16, seed=0)
    src = tmp_path / "llama17.onnx"
    torch.onnx.export(loaded.module, tuple(inputs.values()), str(src), input_names=list(inputs),
                      output_names=loaded.output_names, opset_version=17, dynamo=False,
                      dynamic_axes={name: {0: "batch", 1: "seq"} for name in inputs})
    result = attnopt.optimize(src, tmp_path / "llama17.onnx.onnx", target="onnx")
    assert result.ok, result.report["verification"]
    assert result.report["notes"] == ["converted the model from opset 17 to 23 for the target's ops"]
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "llama17.onnx.onnx")).graph.node)
    assert (ops["Attention"], ops["RMSNormalization"], ops["RotaryEmbedding"]) == (2, 5, 4)
    assert_matches_pytorch(loaded, tmp_path / "llama17.onnx.onnx")


def test_one_broken_site_is_rolled_back_alone(export_cache, torch_models, tmp_path, monkeypatch) -> None:
    """A lowering that gets one site wrong costs that site its fusion, not the model: verification finds
    it by bisection over the sites and every other site stays fused."""
    from attnopt.passes.fusion.recognition import SITE_KEY
    from attnopt.passes.lower.ort import OrtLowering

    exported = export_cache("bert-tiny", "dynamo")
    broken: list[str] = []
    lower_attention = OrtLowering.attention

    def lower_one_wrong(self, model, node):
        form, fused = lower_attention(self, model, node)
        if not broken:  # the first attention site in graph order gets the wrong scale
            broken.append(node.meta[SITE_KEY].anchor)
        if node.meta[SITE_KEY].anchor == broken[0]:
            fused.attributes["scale"] = onnx_ir_attr("scale", 0.5)
        return form, fused

    monkeypatch.setattr(OrtLowering, "attention", lower_one_wrong)
    out = tmp_path / "bert.ort.onnx"
    result = attnopt.optimize(exported.path, out, target="ort")
    verification = result.report["verification"]
    assert list(verification["rolled_back_sites"]) == broken
    assert verification["verified"] and verification["runs"] > 2
    att = result.report["fusions"]["attention"]
    assert (att["sites"], att["fused"]) == (2, 1)
    assert att["unfused"][0]["node"] == broken[0] and att["unfused"][0]["reason"].startswith("rolled back")
    assert result.report["fusions"]["layernorm"]["fused"] == 5 and not result.ok
    assert_matches_pytorch(torch_models("bert-tiny"), out)


def onnx_ir_attr(name: str, value: float):
    import onnx_ir as ir

    return ir.convenience.convert_attribute(name, value)


def test_a_broken_whole_model_pass_is_rolled_back_alone(export_cache, torch_models, tmp_path, monkeypatch) -> None:
    """A cleanup that breaks the model is the culprit when the model breaks with every site left out: it
    alone is rolled back, and every site still fuses."""
    import numpy as np
    import onnx_ir as ir

    from attnopt.passes import manager

    real_cleanup = manager.cleanup

    def breaking_cleanup(model):
        real_cleanup(model)
        weight = next(v for v in model.graph.initializers.values() if v.const_value is not None
                      and v.const_value.numpy().ndim == 2 and v.const_value.numpy().size > 1000)
        weight.const_value = ir.tensor(weight.const_value.numpy() * 1.5, name=weight.name)

    monkeypatch.setattr(manager, "cleanup", breaking_cleanup)
    out = tmp_path / "bert.ort.onnx"
    result = attnopt.optimize(export_cache("bert-tiny", "dynamo").path, out, target="ort")
    verification = result.report["verification"]
    rolled = {p["pass"]: p["rolled_back"] for p in verification["passes"]}
    assert rolled["cleanup"] and not any(v for k, v in rolled.items() if k != "cleanup")
    assert verification["verified"] and verification["rolled_back_sites"] == {} and not result.ok
    assert result.report["fusions"]["attention"]["fused"] == 2
    assert_matches_pytorch(torch_models("bert-tiny"), out)


def test_a_failed_opset_conversion_is_said_and_leaves_the_model_whole(export_cache, tmp_path, monkeypatch) -> None:
    from attnopt.passes import manager

    def failing(model, version):
        raise ValueError("no adapter for this op")

    monkeypatch.setattr(manager, "convert_opset", failing)
    result = attnopt.optimize(export_cache("llama-tiny", "dynamo").path, tmp_path / "l.onnx.onnx", target="onnx")
    assert result.report["notes"] == ["left the model at opset 22: converting it to 23 failed (no adapter for this op)"]
    assert not result.ok and result.report["verification"]["verified"]
    rms = result.report["fusions"]["rmsnorm"]
    assert rms["fused"] == 0 and rms["unfused"][0]["reason"] == "ONNX RMSNormalization needs opset 23; the model has 22"
    assert result.report["fusions"]["attention"]["fused"] == 0  # ONNX Attention needs opset 23 too
