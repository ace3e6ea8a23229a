"""The TensorRT layer: what runs without TensorRT (doctor, profiles, sidecar, error paths) here; the
engine build, inspection and parity are marked `tensorrt` and skip without TensorRT and a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli
from attnopt.engine.doctor import doctor
from attnopt.engine.environment import require_cuda_gpu
from attnopt.engine.optable import operator_table
from attnopt.engine.profiles import InputProfile, default_profiles, parse_profiles, validate_profiles
from attnopt.engine.sidecar import check_compatible, engine_record, read_engine_sidecar, write_engine_sidecar
from attnopt.errors import AttnoptError, MissingDependencyError

import graphs

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def minilm_trt(tmp_path_factory) -> Path:
    """The real MiniLM at opset 20 (TensorRT 10.1's newest), optimized for TensorRT."""
    folder = tmp_path_factory.mktemp("trt")
    exported = attnopt.export("minilm", folder / "minilm.onnx", opset=20)
    attnopt.optimize(exported.path, folder / "minilm.trt.onnx", target="trt")
    return folder


def profiles_for(path: Path) -> dict[str, InputProfile]:
    side = json.loads(path.with_name("minilm.attnopt.json").read_text())
    return default_profiles(side["inputs"], side["example_shape"])


def test_operator_table_is_data() -> None:
    table = operator_table()
    assert table.tensorrt == "10.1" and table.opsets == (9, 20)
    assert {"MatMul", "Softmax", "LayerNormalization", "Gelu"} <= table.supported
    assert "MatMulInteger" in table.unsupported


def test_doctor_passes_the_trt_target(minilm_trt: Path) -> None:
    report = doctor(minilm_trt / "minilm.trt.onnx", profiles_for(minilm_trt / "minilm.onnx"))
    assert report.ok and report.problems == [], report.to_dict()


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny"])
def test_every_zoo_trt_target_passes_doctor(tmp_path: Path, preset: str) -> None:
    exported = attnopt.export(preset, tmp_path / f"{preset}.onnx", opset=20, verify=False)
    out = tmp_path / f"{preset}.trt.onnx"
    attnopt.optimize(exported.path, out, target="trt")
    side = json.loads(exported.sidecar.read_text())
    report = doctor(out, default_profiles(side["inputs"], side["example_shape"]))
    assert report.ok and report.problems == [], report.to_dict()


def test_doctor_warns_on_unfusable_attention_form(minilm_trt: Path) -> None:
    """The raw export splits the scale over Q and K: it builds, but TensorRT will not fuse it."""
    report = doctor(minilm_trt / "minilm.onnx", profiles_for(minilm_trt / "minilm.onnx"))
    assert report.ok
    warnings = [p for p in report.problems if p.severity == "warning"]
    assert len(warnings) == 6 and all("not applied to Q" in w.message for w in warnings)


def test_doctor_rejects_contrib_ops_and_new_opsets(minilm_trt: Path, tmp_path: Path) -> None:
    attnopt.optimize(minilm_trt / "minilm.onnx", tmp_path / "ort.onnx", target="ort")
    report = doctor(tmp_path / "ort.onnx", profiles_for(minilm_trt / "minilm.onnx"))
    assert not report.ok
    assert any("contrib op" in p.message and "--target trt" in p.fix for p in report.errors)
    newer = tmp_path / "opset22.onnx"
    onnx.save(graphs.parse(graphs.LAYERNORM_POW_DIV, opset=22), newer)
    report = doctor(newer, {})
    assert any("opset 22 is outside" in p.message and "--opset 20" in p.fix for p in report.errors)


def test_doctor_rejects_unsupported_ops_and_uncovered_axes(tmp_path: Path) -> None:
    model = graphs.parse("""
agraph (float[B, 4, 4] x) => (float[B] y) {
    y = Det (x)
}
""", opset=20)
    onnx.save(model, tmp_path / "det.onnx")
    report = doctor(tmp_path / "det.onnx", None)
    messages = [p.message for p in report.errors]
    assert any("Det is listed as unsupported" in m for m in messages)
    assert any("covered by no optimization profile" in m for m in messages)
    result = invoke("doctor", str(tmp_path / "det.onnx"))
    assert result.exit_code == 1 and "Det" in result.stderr


def test_profile_parsing() -> None:
    profiles = parse_profiles("input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512")
    assert profiles["input_ids"] == InputProfile("input_ids", (1, 16), (8, 128), (32, 512))
    for bad in ("input_ids:1x16,8x128", "input_ids 1x16,8x128,32x512", "input_ids:1xa,8x128,32x512", ""):
        with pytest.raises(AttnoptError):
            parse_profiles(bad)


INPUTS = [{"name": "input_ids", "shape": ["batch", "seq"]}, {"name": "attention_mask", "shape": ["batch", "seq"]},
          {"name": "pixel", "shape": ["batch", 3]}]


@pytest.mark.parametrize(
    "text, message",
    [
        ("input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512 pixels:1x3,1x3,1x3", "unknown input"),
        ("input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512", "no profile covers"),
        ("input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512 pixel:1x4,2x4,4x4", "must be 3"),
        ("input_ids:1x16,8x128,32x512 attention_mask:1x16x1,8x128x1,32x512x1 pixel:1x3,8x3,32x3", "rank"),
        ("input_ids:1x16,8x8,32x512 attention_mask:1x16,8x128,32x512 pixel:1x3,8x3,32x3", "min <= opt <= max"),
        ("input_ids:1x16,8x128,32x512 attention_mask:1x16,4x128,32x512 pixel:1x3,8x3,32x3", "batch range"),
    ],
)
def test_profile_validation(text: str, message: str) -> None:
    with pytest.raises(AttnoptError, match=message):
        validate_profiles(parse_profiles(text), INPUTS)


def test_default_profiles_from_the_sidecar() -> None:
    profiles = default_profiles(INPUTS, {"batch": 2, "seq": 16})
    assert profiles["input_ids"] == InputProfile("input_ids", (1, 1), (2, 16), (32, 512))
    assert profiles["pixel"] == InputProfile("pixel", (1, 3), (2, 3), (32, 3))
    validate_profiles(profiles, INPUTS)


def test_engine_sidecar_round_trip_and_mismatches(minilm_trt: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not built here")
    gpu = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    record = engine_record(minilm_trt / "minilm.trt.onnx", "10.1.0", gpu,
                           {"input_ids": {"min": [1, 1], "opt": [2, 16], "max": [32, 512]}}, "graph", True)
    write_engine_sidecar(engine.with_name("m.engine.json"), record)
    back = read_engine_sidecar(engine)
    assert back == record and len(back["onnx_sha256"]) == 64
    check_compatible(back, "10.1.0", gpu)
    with pytest.raises(AttnoptError, match="built with TensorRT 10.1.0, this machine has TensorRT 10.8.0") as info:
        check_compatible(back, "10.8.0", gpu)
    assert "attnopt build" in info.value.hint
    with pytest.raises(AttnoptError, match=r"compute capability 9.0\), this GPU is NVIDIA A100"):
        check_compatible(back, "10.1.0", {"name": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(AttnoptError, match="has no sidecar"):
        read_engine_sidecar(tmp_path / "other.engine")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_build_and_inspect_without_tensorrt_say_what_to_install(minilm_trt: Path, tmp_path: Path) -> None:
    for args in (["build", str(minilm_trt / "minilm.trt.onnx"), "-o", str(tmp_path / "m.engine")],):
        result = invoke(*args)
        assert result.exit_code == 2
        assert result.stderr.strip() == ("error: TensorRT is not installed (pip install 'attnopt[gpu]' "
                                         "(TensorRT 10 or 11) on a machine with an NVIDIA GPU)")
        assert not (tmp_path / "m.engine").exists()
    (tmp_path / "x.engine").write_bytes(b"\0")
    result = invoke("inspect", str(tmp_path / "x.engine"))
    assert result.exit_code == 2 and "TensorRT is not installed" in result.stderr


def test_build_refuses_what_doctor_rejects(minilm_trt: Path, tmp_path: Path) -> None:
    attnopt.optimize(minilm_trt / "minilm.onnx", tmp_path / "ort.onnx", target="ort")
    (tmp_path / "ort.attnopt.json").write_text((minilm_trt / "minilm.attnopt.json").read_text())
    result = invoke("build", str(tmp_path / "ort.onnx"), "-o", str(tmp_path / "m.engine"))
    assert result.exit_code == 2 and "TensorRT would fail" in result.stderr and "contrib op" in result.stderr


def test_missing_gpu_message() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(MissingDependencyError, match="no CUDA GPU is visible"):
        require_cuda_gpu()


needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT and an NVIDIA GPU")


@pytest.mark.tensorrt
@needs_tensorrt
def test_minilm_engine_builds_matches_and_fuses_attention(minilm_trt: Path, tmp_path: Path) -> None:
    from attnopt.engine.build import build
    from attnopt.engine.inspect import attention_fusion_warnings

    cache = tmp_path / "trt.cache"
    result = build(minilm_trt / "minilm.trt.onnx", tmp_path / "minilm.engine", timing_cache=cache)
    assert result.record["strongly_typed"] and cache.is_file()
    assert attention_fusion_warnings(result.engine) == []
    parity = attnopt.check("minilm", [result.engine], shapes=[(1, 8), (2, 16), (8, 128)])
    assert parity.passed, [c.metrics.reason for c in parity.failures]
    again = build(minilm_trt / "minilm.trt.onnx", tmp_path / "again.engine", timing_cache=cache)
    assert again.record["onnx_sha256"] == result.record["onnx_sha256"]


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_minilm_reduced_precision_engines(minilm_trt: Path, tmp_path: Path, precision: str) -> None:
    """TensorRT 10's builder-flag path; TensorRT 11 needs the precision passes' graphs instead."""
    import tensorrt

    if int(tensorrt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 builds strongly typed networks only: needs the precision passes' output")
    from attnopt.engine.build import build

    result = build(minilm_trt / "minilm.trt.onnx", tmp_path / f"m.{precision}.engine", precision=precision)
    assert result.record["precision"] == precision and not result.record["strongly_typed"]
    check = attnopt.check("minilm", [result.engine])  # tolerances by the precision its sidecar records
    assert check.passed and {c.precision for c in check.cases} == {precision}
