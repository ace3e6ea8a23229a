"""The TensorRT layer: what runs without TensorRT (doctor, profiles, sidecar, error paths) here; the
engine build, inspection and parity are marked `tensorrt` and skip without TensorRT and a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser
import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli
from attnopt.engine.doctor import doctor
from attnopt.engine.environment import installed_tensorrt_version, require_cuda_gpu, tensorrt_unavailable
from attnopt.engine.optable import known_versions, load_table, select_table
from attnopt.engine.profiles import InputProfile, default_profiles, parse_profiles, validate_profiles
from attnopt.engine.sidecar import check_compatible, engine_record, read_engine_sidecar, write_engine_sidecar
from attnopt.errors import AttnoptError, MissingDependencyError

import graphs
from conftest import copy_export

HAS_TENSORRT = installed_tensorrt_version() is not None  # importable, not only a package of that name
SENTENCES = Path(__file__).parent.parent / "benchmarks" / "data" / "sentences-calibration.txt"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def minilm_trt(tmp_path_factory) -> Path:
    """The real MiniLM at opset 20 (TensorRT 10.1's newest), optimized for TensorRT 10.1: the narrowest
    table, so the result fits every table."""
    folder = tmp_path_factory.mktemp("trt")
    exported = attnopt.export("minilm", folder / "minilm.onnx", opset=20)
    attnopt.optimize(exported.path, folder / "minilm.trt.onnx", target="trt", tensorrt_version="10.1")
    return folder


def profiles_for(path: Path) -> dict[str, InputProfile]:
    side = json.loads(path.with_name("minilm.attnopt.json").read_text())
    return default_profiles(side["inputs"], side["example_shape"])


def test_operator_table_is_data() -> None:
    table = load_table("10.1")
    assert table.version == "10.1" and table.opsets == (9, 20) and not table.strongly_typed_only
    assert {"MatMul", "Softmax", "LayerNormalization", "Gelu"} <= table.supported
    assert "MatMulInteger" in table.unsupported
    assert table.source["commit"] == "96e781103cfc4adf4a6bb557e94bac8e693f6f4c"


@pytest.mark.parametrize("version", known_versions())
def test_doctor_passes_the_trt_target(minilm_trt: Path, version: str) -> None:
    report = doctor(minilm_trt / "minilm.trt.onnx", profiles_for(minilm_trt / "minilm.onnx"), version)
    assert report.ok and report.problems == [], report.to_dict()
    assert report.to_dict()["operator_table"]["version"] == version
    result = invoke("doctor", str(minilm_trt / "minilm.trt.onnx"), "--tensorrt-version", version)
    assert result.exit_code == 0 and f"against TensorRT {version}'s ONNX operator table" in result.stderr


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny"])
def test_every_zoo_trt_target_passes_doctor(export_cache, tmp_path: Path, preset: str) -> None:
    """The default export (opset 22), optimized for each TensorRT version, passes that version's doctor:
    the trt target converts the opset into the table's range and writes only the ops the table has."""
    exported = export_cache(preset)  # the session's default export: read only
    side = json.loads(exported.sidecar.read_text())
    for version in known_versions():
        out = tmp_path / f"{preset}.trt{version}.onnx"
        result = attnopt.optimize(exported.path, out, target="trt", tensorrt_version=version)
        assert result.ok and result.report["tensorrt_table"]["version"] == version
        opset = next(o.version for o in onnx.load(str(out), load_external_data=False).opset_import if o.domain == "")
        assert opset == (20 if version == "10.1" else 23)
        if preset == "llama-tiny":  # RMSNorm and rotary where the parser has them, with the reason where not
            rms = result.report["fusions"]["rmsnorm"]
            if version == "10.1":
                assert rms["fused"] == 0 and "10.1's ONNX parser has no RMSNormalization" in rms["unfused"][0]["reason"]
            else:
                assert rms["fused"] == rms["sites"] == 5
        report = doctor(out, default_profiles(side["inputs"], side["example_shape"]), version)
        assert report.ok and report.problems == [], (version, report.to_dict())


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
    report = doctor(newer, {}, "10.1")
    assert any("opset 22 is outside TensorRT 10.1's range 9-20" in p.message and "--opset 20" in p.fix
               and "--tensorrt-version 10.1" in p.fix for p in report.errors)


def test_doctor_rejects_unsupported_ops_and_uncovered_axes(tmp_path: Path) -> None:
    model = graphs.parse("""
agraph (float[B, 4, 4] x) => (float[B] y) {
    y = Det (x)
}
""", opset=20)
    onnx.save(model, tmp_path / "det.onnx")
    report = doctor(tmp_path / "det.onnx", None, "10.1")
    messages = [p.message for p in report.errors]
    assert any("Det is listed as unsupported" in m for m in messages)
    assert any("covered by no optimization profile" in m for m in messages)
    result = invoke("doctor", str(tmp_path / "det.onnx"), "--tensorrt-version", "10.1")
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
    """A model TensorRT would reject is the model's failure (exit 1), found before TensorRT is needed."""
    attnopt.optimize(minilm_trt / "minilm.onnx", tmp_path / "ort.onnx", target="ort")
    (tmp_path / "ort.attnopt.json").write_text((minilm_trt / "minilm.attnopt.json").read_text())
    result = invoke("build", str(tmp_path / "ort.onnx"), "-o", str(tmp_path / "m.engine"))
    assert result.exit_code == 1 and "would fail" in result.stderr and "contrib op" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_gpu_message() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(MissingDependencyError, match="no CUDA GPU is visible"):
        require_cuda_gpu()


needs_tensorrt = pytest.mark.skipif(bool(tensorrt_unavailable()),
                                    reason=f"needs TensorRT and an NVIDIA GPU: {tensorrt_unavailable() or 'both here'}")


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
    """TensorRT 10: the builder-flag path. TensorRT 11: that path is refused with the quantize command, and
    the graph attnopt quantize writes builds strongly typed and meets that precision's tolerance."""
    import tensorrt

    from attnopt.engine.build import build

    source = minilm_trt / "minilm.trt.onnx"
    if int(tensorrt.__version__.split(".")[0]) >= 11:
        with pytest.raises(AttnoptError, match=f"--precision {precision}") as info:
            build(source, tmp_path / f"m.{precision}.engine", precision=precision)
        assert f"attnopt quantize {source}" in info.value.hint and not (tmp_path / f"m.{precision}.engine").exists()
        real_text = None if precision == "fp16" else SENTENCES  # int8 is calibrated and checked on real text
        quantized = attnopt.quantize(source, tmp_path / f"m.{precision}.onnx", precision=precision,
                                     calibration=real_text)
        assert quantized.passed
        result = build(tmp_path / f"m.{precision}.onnx", tmp_path / f"m.{precision}.engine", precision=precision)
        assert result.record["precision"] == "graph" and result.record["strongly_typed"]
        check = attnopt.check("minilm", [result.engine], inputs=real_text)
    else:
        result = build(source, tmp_path / f"m.{precision}.engine", precision=precision)
        assert result.record["precision"] == precision and not result.record["strongly_typed"]
        check = attnopt.check("minilm", [result.engine])  # tolerances by the precision its sidecar records
    assert check.passed and {c.precision for c in check.cases} == {precision}


# --- operator tables per TensorRT line, and choosing one ---------------------------------------------------------


@pytest.mark.parametrize("version", known_versions())
def test_every_table_loads_with_its_source(version: str) -> None:
    table = load_table(version)
    assert table.version == version and 9 == table.min_opset < table.max_opset
    assert table.source["repository"] == "onnx/onnx-tensorrt" and table.source["file"] == "docs/operators.md"
    assert not table.supported & table.unsupported
    assert set(table.restrictions) <= table.supported  # restrictions only for ops the parser takes
    assert set(table.op_types) <= table.supported and {"FLOAT", "FLOAT16"} <= set(table.op_types["MatMul"])
    assert table.supports("MatMul") and table.supports("MatMul", "ai.onnx")
    assert not table.supports("MatMul", "com.microsoft")  # a contrib op of the same name is not TensorRT's


def test_tables_hold_what_each_line_added() -> None:
    old, newest10, first11, newest11 = (load_table(v) for v in ("10.1", "10.15", "11.0", "11.5"))
    llm_ops = {"RMSNormalization", "RotaryEmbedding", "TensorScatter", "Attention"}
    assert not llm_ops & old.supported and llm_ops <= newest10.supported <= first11.supported
    assert old.opsets == (9, 20) and newest10.opsets == (9, 24) and first11.opsets == (9, 24)
    assert newest11.opsets == (9, 25) and {"Swish", "DFT"} <= newest11.supported and "DFT" not in first11.supported
    assert not newest10.strongly_typed_only and first11.strongly_typed_only and newest11.strongly_typed_only
    assert newest10.restriction("RotaryEmbedding") == {"input_types": {"3": ["INT64"]}}
    assert old.clamp_opset(22) == 20 and newest10.clamp_opset(22) == 22 and newest11.clamp_opset(7) == 9
    assert "axes" in old.restriction("Slice").get("constant_inputs", {}).values()
    assert "Slice" not in newest10.restrictions  # 10.3 took tensor axes


@pytest.mark.parametrize(
    "requested, installed, expected",
    [
        (None, None, "11.5"),  # no TensorRT here: the newest table
        ("10.1", None, "10.1"),
        ("10", None, "10.15"), ("10.x", None, "10.15"), ("11", None, "11.5"), ("11.x", None, "11.5"),
        ("10.16.1", None, "10.15"),  # a full release: the newest table at or below it
        ("11.3", None, "11.0"),
        (None, "10.16.1.11", "10.15"), (None, "10.8.0.43", "10.1"), (None, "11.3.0", "11.0"), (None, "11.5.0", "11.5"),
        ("10.1", "10.16.1", "10.1"),  # an older table of the installed line is allowed: it claims less
        ("11.x", "11.3.0", "11.0"),  # a line alone means the newest table the installed release takes
    ],
)
def test_select_table(requested: str | None, installed: str | None, expected: str) -> None:
    table = select_table(requested, installed=installed)
    assert table.version == expected
    assert table.chosen_because == (f"--tensorrt-version {requested}" if requested else
                                    f"installed TensorRT {installed}" if installed else
                                    "newest table; TensorRT is not installed here")


@pytest.mark.parametrize(
    "requested, installed, message, hint",
    [
        ("12", None, "no operator table for TensorRT 12", "10.1, 10.15, 11.0, 11.5, or 10.x / 11.x"),
        ("ten", None, "unknown TensorRT version 'ten'", "10.1, 10.15, 11.0, 11.5, or 10.x / 11.x"),
        ("10.0", None, "no operator table for TensorRT 10.0", "10.1, 10.15"),
        ("10.x", "11.5.0", "asks for TensorRT 10.15's operator table, but TensorRT 11.5.0 is installed here",
         "choose one this TensorRT takes: 11.0, 11.5, 11.x"),
        ("11.5", "10.16.1", "but TensorRT 10.16.1 is installed here", "10.1, 10.15, 10.x"),
        ("10.15", "10.8.0", "asks for TensorRT 10.15's operator table, but TensorRT 10.8.0", "10.1, 10.x"),
        (None, "9.3.0", "TensorRT 9.3.0 is installed here and attnopt has no operator table for it",
         "install TensorRT 10.x or 11.x"),
    ],
)
def test_select_table_errors_name_the_choices(requested: str | None, installed: str | None, message: str,
                                              hint: str) -> None:
    with pytest.raises(AttnoptError) as info:
        select_table(requested, installed=installed)
    assert message in info.value.message and hint in info.value.hint
    assert "\n" not in info.value.one_line()


def test_unknown_tensorrt_version_is_a_one_line_usage_error(minilm_trt: Path) -> None:
    for command in (["doctor", str(minilm_trt / "minilm.trt.onnx")],
                    ["build", str(minilm_trt / "minilm.trt.onnx"), "-o", str(minilm_trt / "x.engine")]):
        result = invoke(*command, "--tensorrt-version", "9.2")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1
        assert "no operator table for TensorRT 9.2" in result.stderr and "10.1, 10.15, 11.0, 11.5" in result.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the default is its own table")
def test_doctor_says_which_table_it_used(minilm_trt: Path) -> None:
    model = str(minilm_trt / "minilm.trt.onnx")
    result = invoke("doctor", model)
    assert result.exit_code == 0
    said = " ".join(result.stderr.split())  # rich wraps the summary line at the terminal's width
    assert "against TensorRT 11.5's ONNX operator table (newest table; TensorRT is not installed here)" in said
    result = invoke("doctor", model, "--tensorrt-version", "10.1", "--json")
    table = json.loads(result.stdout)["operator_table"]
    assert table["version"] == "10.1" and table["chosen_because"] == "--tensorrt-version 10.1"
    assert table["source"]["commit"] and table["opsets"] == [9, 20]


@pytest.fixture(scope="module")
def minilm_default_trt(export_cache, tmp_path_factory) -> Path:
    """The real MiniLM at the default export opset (22), optimized for TensorRT."""
    folder = tmp_path_factory.mktemp("trt22")
    exported = copy_export(export_cache("minilm"), folder / "minilm.onnx")  # the session's default export
    attnopt.optimize(exported, folder / "minilm.trt.onnx", target="trt")
    return folder


def test_default_export_fits_the_newer_tables_and_10_1_says_how(minilm_default_trt: Path) -> None:
    model = minilm_default_trt / "minilm.trt.onnx"
    opset = next(o.version for o in onnx.load(str(model), load_external_data=False).opset_import if o.domain == "")
    assert 20 < opset <= 24, "the default export should be newer than 10.1's range"
    profiles = profiles_for(minilm_default_trt / "minilm.onnx")
    for version in ("10.15", "11.0", "11.5"):
        report = doctor(model, profiles, version)
        assert report.ok and report.problems == [], (version, report.to_dict())
    result = invoke("doctor", str(model), "--tensorrt-version", "10.1")
    assert result.exit_code == 1
    assert (f"error: (model): opset {opset} is outside TensorRT 10.1's range 9-20 (re-run attnopt optimize on the "
            f"export with --target trt --tensorrt-version 10.1 (it converts the opset), or export with --opset 20)"
            in result.stderr)


# --- restrictions the tables state, checked on tiny graphs ----------------------------------------------------


def _doctor_errors(tmp_path: Path, text: str, version: str, opset: int = 20, valid: bool = True) -> list[str]:
    """valid=False: skip onnx.checker, for a graph that breaks the ONNX spec the way a sloppy writer would."""
    path = tmp_path / "g.onnx"
    model = graphs.parse(text, opset=opset) if valid else onnx.parser.parse_model(graphs.HEADER.format(opset=opset) + text)
    onnx.save(model, path)
    return [p.message for p in doctor(path, {}, version).errors]


def test_restriction_computed_axes_for_10_1(tmp_path: Path) -> None:
    computed = """
agraph (float[2, 3, 4] x, int64[1] dims) => (float[2, 3, 4] y) {
    one = Constant <value = int64[1] {1}> ()
    folded = Add (one, one)
    a = ReduceMean <keepdims = 1> (x, folded)
    runtime = Neg (dims)
    b = Slice (x, one, dims, runtime)
    y = Sub (x, a)
}
"""
    errors = _doctor_errors(tmp_path, computed, "10.1")
    assert errors == ["Slice input axes must be a build-time constant for TensorRT 10.1's ONNX parser, and it is "
                      "computed at run time"]  # folded (constants only) is constant, runtime (from an input) is not
    assert _doctor_errors(tmp_path, computed, "10.15") == []  # 10.3 took tensor axes for Slice


def test_restrictions_on_the_llm_ops(tmp_path: Path) -> None:
    rotary = """
agraph (float[1, 2, 4, 8] x, float[4, 4] cos, float[4, 4] sin, int32[1, 4] pos) => (float[1, 2, 4, 8] y) {
    y = RotaryEmbedding (x, cos, sin, pos)
}
"""
    assert _doctor_errors(tmp_path, rotary, "10.15", opset=23, valid=False) == [
        "RotaryEmbedding input 3 is INT32; for TensorRT 10.15's ONNX parser it must be INT64"]
    assert _doctor_errors(tmp_path, rotary.replace("int32[1, 4] pos", "int64[1, 4] pos"), "11.5", opset=23) == []
    assert any("RotaryEmbedding is not in the table" in e
               for e in _doctor_errors(tmp_path, rotary.replace("int32", "int64"), "10.1", opset=23))
    attention = """
agraph (float[1, 2, 4, 8] q, float[1, 2, 4, 8] k, float[1, 2, 4, 8] v, float[1, 2, 3, 8] pk, float[1, 2, 3, 8] pv)
    => (float[1, 2, 4, 8] y, float[1, 2, 7, 8] present_k) {
    y, present_k = Attention <softcap = 30.0> (q, k, v, , pk, pv)
}
"""
    errors = _doctor_errors(tmp_path, attention, "10.15", opset=23)
    assert "Attention input past_key is not supported for TensorRT 10.15's ONNX parser" in errors
    assert "Attention output present_key is not supported for TensorRT 10.15's ONNX parser" in errors
    assert "Attention attribute softcap=30.0 is not supported for TensorRT 10.15's ONNX parser" in errors


def test_restrictions_on_quantization_and_layernorm(tmp_path: Path) -> None:
    model = """
agraph (float[2, 16] x) => (float[2, 16] y, float[2, 1] mean) {
    scale = Constant <value = float {0.05}> ()
    zp = Constant <value = int8 {3}> ()
    q = QuantizeLinear (x, scale, zp)
    dq = DequantizeLinear (q, scale, zp)
    gamma = Constant <value = float[16] {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}> ()
    y, mean = LayerNormalization (dq, gamma)
}
"""
    errors = _doctor_errors(tmp_path, model, "11.5")
    assert errors == ["QuantizeLinear y_zero_point must be zero for TensorRT 11.5's ONNX parser",
                      "DequantizeLinear x_zero_point must be zero for TensorRT 11.5's ONNX parser",
                      "LayerNormalization output Mean is not supported for TensorRT 11.5's ONNX parser"]
    symmetric = model.replace("int8 {3}", "int8 {0}").replace("y, mean = LayerNormalization", "y = LayerNormalization")
    assert _doctor_errors(tmp_path, symmetric.replace(", float[2, 1] mean", ""), "11.5") == []


# --- precision on TensorRT 10 and 11 (decided before TensorRT is touched) --------------------------------------


def test_precision_route_per_line(tmp_path: Path) -> None:
    from attnopt.engine.precision_route import builder_precision

    source = tmp_path / "m.trt.onnx"
    ten, eleven = load_table("10.15"), load_table("11.5")
    assert builder_precision("graph", "fp32", eleven, source) == "graph"
    assert builder_precision("fp16", "fp16", eleven, source) == "graph"  # already fp16: nothing for a flag to do
    assert builder_precision("fp16", "fp32", ten, source) == "fp16"  # TensorRT 10's builder flag
    with pytest.raises(AttnoptError) as info:
        builder_precision("int8", "fp32", eleven, source)
    assert info.value.one_line() == (
        f"TensorRT 11 builds strongly typed networks only, so --precision int8 cannot be a builder flag there and "
        f"m.trt.onnx is fp32 (run `attnopt quantize {source} -o {tmp_path / 'm.trt.int8.onnx'} --precision int8`, "
        f"then `attnopt build {tmp_path / 'm.trt.int8.onnx'} -o ENGINE`)")


def test_tensorrt_11_paths_touch_no_weak_typing_api() -> None:
    """On 11 the network flags and precision flags are decided without reading the tensorrt module at all
    (None stands in for it: any attribute read would raise), so no removed 10.x name can be reached."""
    from attnopt.engine.trt_api import network_creation_flags, weak_precision_flag

    assert network_creation_flags(None, 11, strongly_typed=True) == 0
    with pytest.raises(RuntimeError, match="TensorRT 11.x has no builder flag for fp16"):
        weak_precision_flag(None, 11, "fp16")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: its own line decides")
def test_build_fp16_for_tensorrt_11_says_which_quantize_to_run(minilm_trt: Path, tmp_path: Path) -> None:
    source = minilm_trt / "minilm.trt.onnx"
    result = invoke("build", str(source), "-o", str(tmp_path / "m.engine"), "--precision", "fp16",
                    "--tensorrt-version", "11")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"(run `attnopt quantize {source} -o {minilm_trt / 'minilm.trt.fp16.onnx'} --precision fp16`" in result.stderr
    assert not (tmp_path / "m.engine").exists()


# --- the real TensorRT API, where TensorRT and a GPU are ---------------------------------------------------------

TINY_ATTENTION = """
agraph (float[1, 2, 8, 16] q, float[1, 2, 8, 16] k, float[1, 2, 8, 16] v) => (float[1, 2, 8, 16] out) {
    s = Constant <value = float {0.25}> ()
    qs = Mul (q, s)
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (qs, kt)
    probs = Softmax <axis = -1> (scores)
    out = MatMul (probs, v)
}
"""


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("precision", ["graph", "fp16", "int8"])
def test_build_calls_only_the_installed_tensorrt_api(tmp_path: Path, precision: str) -> None:
    """Every build path on the installed TensorRT, 10.x or 11.x: a TensorRT-10-only call (a removed builder
    flag, the STRONGLY_TYPED creation flag, a calibrator) on 11 fails here as an AttributeError. On 11,
    --precision fp16/int8 of an fp32 graph must be refused with the quantize command instead."""
    import tensorrt

    from attnopt.engine.build import build
    from attnopt.engine.inspect import layers

    path = tmp_path / "tiny.onnx"
    onnx.save(graphs.parse(TINY_ATTENTION, opset=17), path)
    major = int(tensorrt.__version__.split(".")[0])
    engine = tmp_path / "tiny.engine"
    if major >= 11 and precision != "graph":
        with pytest.raises(AttnoptError, match="attnopt quantize"):
            build(path, engine, precision=precision)
        return
    result = build(path, engine, precision=precision, timing_cache=tmp_path / "trt.cache")
    assert result.record["tensorrt"] == tensorrt.__version__
    assert result.record["operator_table"]["version"] == select_table(None).version
    assert result.record["operator_table"]["version"].split(".")[0] == str(major)
    assert result.record["strongly_typed"] == (precision == "graph") and layers(engine)
