"""Export round-trips for every preset with both exporters, dynamic axes, sidecar, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import attnopt
from attnopt.errors import ModelSourceError, OutputError
from attnopt.exporter import torch_export
from attnopt.models import load_model
from attnopt.runtime import OrtRunner, TorchRunner

from conftest import TINY_PRESETS


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_export_round_trip(export_cache, preset: str, exporter: str) -> None:
    result = export_cache(preset, exporter)
    assert result.ok, result.verification.to_dict()
    assert result.exporter == exporter
    shapes = [(s.batch, s.seq) for s in result.verification.shapes]
    assert len(set(shapes)) == 2, "verification must run at two different shapes"
    for shape in result.verification.shapes:
        for out in shape.outputs:
            assert out.max_abs <= 1e-4 and out.cosine > 0.99999


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny"])
def test_dynamic_axes_are_really_dynamic(export_cache, preset: str) -> None:
    """A third shape, unlike both verified ones, still runs and matches PyTorch."""
    result = export_cache(preset)
    loaded = load_model(preset)
    feed = {k: v.numpy() for k, v in loaded.make_inputs(5, 37, seed=7).items()}
    with OrtRunner(result.path) as ort_runner, TorchRunner(loaded.module, loaded.input_names, loaded.output_names) as ref:
        actual, expected = ort_runner.infer(feed), ref.infer(feed)
    for name in loaded.output_names:
        assert actual[name].shape == expected[name].shape
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, rtol=1e-3)


def test_sidecar_content(export_cache) -> None:
    result = export_cache("minilm")
    side = json.loads(result.sidecar.read_text())
    assert result.sidecar.name == "minilm-dynamo-feature-extraction.attnopt.json"
    assert side["source"]["kind"] == "preset" and side["source"]["spec"] == "minilm"
    assert side["task"] == "feature-extraction" and side["exporter"] == "dynamo"
    assert side["opset"] == result.opset >= 18
    names = [i["name"] for i in side["inputs"]]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["dtype"] == "int64" and i["dynamic_axes"] == {"0": "batch", "1": "seq"} for i in side["inputs"])
    assert side["outputs"][0]["name"] == "last_hidden_state"
    assert side["outputs"][0]["dynamic_axes"] == {"0": "batch", "1": "seq"}
    assert {"torch", "onnx", "transformers"} <= set(side["versions"])
    assert side["verification"]["passed"] is True and len(side["verification"]["shapes"]) == 2
    model = onnx.load(str(result.path), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == side["opset"]


def test_static_export_bakes_the_shape(tmp_path: Path) -> None:
    result = attnopt.export("bert-tiny", tmp_path / "s.onnx", dynamic=False, batch=1, seq=8)
    assert result.ok and len(result.verification.shapes) == 1
    side = json.loads(result.sidecar.read_text())
    assert side["inputs"][0]["shape"] == [1, 8] and side["inputs"][0]["dynamic_axes"] == {}


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user data")
    with pytest.raises(OutputError, match="already exists"):
        attnopt.export("bert-tiny", out, verify=False)
    assert out.read_bytes() == b"user data"
    attnopt.export("bert-tiny", out, verify=False, force=True)
    onnx.checker.check_model(str(out))


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    factory = tmp_path / "f.py"
    factory.write_text("def build():\n    raise ValueError('boom')\n")
    with pytest.raises(ModelSourceError, match="boom"):
        attnopt.export(f"{factory}:build", tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.py"]


def test_output_folder_created_one_level_only(tmp_path: Path) -> None:
    """`-o DIR/model.onnx` creates DIR; a path missing two levels is a typo more likely than a wish."""
    with pytest.raises(OutputError, match="does not exist"):
        attnopt.export("bert-tiny", tmp_path / "missing" / "deeper" / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    result = attnopt.export("bert-tiny", tmp_path / "new" / "m.onnx", exporter="torchscript", verify=False)
    assert result.path.is_file() and result.path.parent.name == "new"


def test_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the threshold the weights go to model.onnx.data, and the model still verifies."""
    monkeypatch.setattr(torch_export, "EXTERNAL_DATA_THRESHOLD", 1_000_000)
    monkeypatch.setattr("attnopt.exporter.EXTERNAL_DATA_THRESHOLD", 1_000_000)
    for exporter in ("dynamo", "torchscript"):
        out = tmp_path / f"{exporter}.onnx"
        result = attnopt.export("bert-tiny", out, exporter=exporter)
        assert result.ok and result.external_data
        data = tmp_path / f"{exporter}.onnx.data"
        assert data.is_file() and data.stat().st_size > out.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_factory_export(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "examples" / "custom_model.py"
    result = attnopt.export(f"{example}:build", tmp_path / "c.onnx")
    assert result.ok
    side = json.loads(result.sidecar.read_text())
    assert side["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "seq"}


@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm"])
def test_tasks(export_cache, task: str) -> None:
    result = export_cache("gpt2-tiny", task=task)
    assert result.ok
    assert json.loads(result.sidecar.read_text())["outputs"][0]["name"] == "logits"


def test_dynamo_failure_falls_back_to_torchscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::something")

    monkeypatch.setattr("attnopt.exporter.export_dynamo", broken)
    result = attnopt.export("bert-tiny", tmp_path / "m.onnx")
    assert result.exporter == "torchscript" and result.ok
    assert "fell back to torchscript" in result.notes[0] and "aten::something" in result.notes[0]
    assert "fell back" in json.loads(result.sidecar.read_text())["notes"][0]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["bert-base", "gpt2"])
def test_realistic_presets(tmp_path: Path, preset: str) -> None:
    result = attnopt.export(preset, tmp_path / f"{preset}.onnx")
    assert result.ok, result.verification.to_dict()
