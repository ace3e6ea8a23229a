"""attnopt check: pass and fail cases, NaN handling, tolerance precedence, reporters, inputs, bisect."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import attnopt
from attnopt.cli import cli
from attnopt.errors import AttnoptError
from attnopt.parity.metrics import compare
from attnopt.parity.tolerance import Tolerance, ToleranceSet, load_tolerances
from attnopt.testing import ParityAssertionError, assert_parity

from conftest import copy_export, copy_model


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def perturbed_copy(src: Path, dst: Path, pick) -> str:
    """Copy a model with one initializer changed; returns the name of the first node that reads it."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if pick(i))
    array = numpy_helper.to_array(init).copy()
    array.flat[::3] += 0.5  # uneven, so no normalisation downstream can cancel it
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(dst))
    return next(n.name for n in model.graph.node if init.name in n.input)


@pytest.fixture(scope="module")
def bert(export_cache, optimize_cache, tmp_path_factory):
    """The session's verified bert-tiny export and its ort optimization, copied under the names the reports show."""
    folder = tmp_path_factory.mktemp("check")
    copy_export(export_cache("bert-tiny"), folder / "bert.onnx")
    copy_model(optimize_cache("bert-tiny").path, folder / "bert.ort.onnx")
    return folder


def test_export_and_optimized_pass(bert: Path) -> None:
    result = attnopt.check("bert-tiny", [bert / "bert.onnx", bert / "bert.ort.onnx"])
    assert result.passed
    assert {c.inputs for c in result.cases} == {"1x2", "2x16", "4x128"}
    assert len(result.cases) == 2 * 3 * 1
    assert all(c.precision == "fp32" and c.criteria == {"atol": 1e-4, "rtol": 1e-3} for c in result.cases)


def test_perturbed_weight_fails_naming_output_and_shape(bert: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    perturbed_copy(bert / "bert.onnx", broken, lambda i: list(i.dims) == [128, 512])  # an FFN weight
    result = invoke("check", "bert-tiny", str(broken), "--shapes", "2x16")
    assert result.exit_code == 1
    assert "broken.onnx inputs 2x16 output last_hidden_state" in result.stderr
    with pytest.raises(ParityAssertionError, match="last_hidden_state"):
        assert_parity("bert-tiny", broken, shapes=[(2, 16)])


def test_nan_handling_both_ways() -> None:
    ref = np.array([1.0, np.nan, 3.0], dtype=np.float32)
    assert compare("y", ref.copy(), ref, Tolerance()).passed, "NaN where the reference has NaN passes"
    assert not compare("y", np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]), Tolerance()).passed
    assert "NaN" in compare("y", np.array([1.0, 2.0, 3.0]), ref, Tolerance()).reason


def test_nothing_passes_vacuously() -> None:
    empty = np.zeros((2, 0), dtype=np.float32)
    assert compare("y", empty, empty, Tolerance()).reason == "output is empty"
    zeros = np.zeros((2, 3), dtype=np.float32)
    assert compare("y", zeros, zeros, Tolerance()).reason == "both outputs are all zeros"
    assert compare("y", None, zeros + 1, Tolerance()).reason == "output missing"


def test_logits_top1_and_cosine_criteria() -> None:
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
    swapped = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1]], dtype=np.float32)
    m = compare("logits", swapped, ref, Tolerance(atol=None, rtol=None, top1=0.99))
    assert m.top1 == 0.5 and m.top5 == 1.0 and "top-1 agreement 50.00%" in m.reason
    assert "cosine" in compare("logits", swapped, ref, Tolerance(atol=None, rtol=None, cosine=0.9999)).reason


def test_tolerance_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.attnopt.check]\natol = 0.5\n[tool.attnopt.check.fp16]\ncosine = 0.99\n"
        "[tool.attnopt.check.outputs.logits]\natol = 2.0\n")
    monkeypatch.chdir(tmp_path)
    tol = load_tolerances({})
    assert tol.for_output("fp32", "hidden") == Tolerance(atol=0.5, rtol=1e-3)  # config over defaults
    assert tol.for_output("fp32", "logits").atol == 2.0  # per output
    assert tol.for_output("fp16", "hidden").cosine == 0.99  # per precision
    cli_wins = load_tolerances({"atol": 0.25, "rtol": None})
    assert cli_wins.for_output("fp32", "hidden").atol == 0.25  # command line over config
    assert ToleranceSet({}, {}).for_output("int8", "x") == Tolerance(atol=None, rtol=None, cosine=0.99, top1=0.99)  # defaults
    (tmp_path / "attnopt.toml").write_text("[check]\nbogus = 1\n")
    with pytest.raises(AttnoptError, match="unknown tolerance key"):
        load_tolerances({}).for_output("fp32", "x")


def test_junit_xml_parses_back(bert: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    perturbed_copy(bert / "bert.onnx", broken, lambda i: list(i.dims) == [512, 128] and i.name.startswith("val_"))
    junit, report = tmp_path / "parity.xml", tmp_path / "parity.json"
    result = invoke("-q", "check", "bert-tiny", str(bert / "bert.onnx"), str(broken), "--junit-xml", str(junit),
                    "--json", str(report))
    assert result.exit_code == 1
    suites = ET.parse(junit).getroot()
    by_name = {s.get("name"): s for s in suites.findall("testsuite")}
    assert set(by_name) == {"bert.onnx", "broken.onnx"}
    assert by_name["bert.onnx"].get("failures") == "0" and len(by_name["bert.onnx"].findall("testcase")) == 3
    failing = by_name["broken.onnx"].findall("testcase/failure")
    assert len(failing) == 3 and "beyond atol" in failing[0].get("message")
    data = json.loads(report.read_text())
    assert data["passed"] is False and len(data["cases"]) == 6


def test_text_and_npz_inputs(export_cache, tmp_path: Path) -> None:
    exported = export_cache("minilm")  # shared by the session: read only
    text = tmp_path / "sentences.txt"
    text.write_text("A man is playing a guitar.\nThe weather is lovely today, isn't it?\n\nShort.\n")
    result = attnopt.check("minilm", [exported.path], inputs=text)
    assert result.passed and [c.inputs for c in result.cases] == ["sentences.txt"]
    feeds = {"input_ids": np.array([[101, 2023, 2003, 102]]), "attention_mask": np.ones((1, 4), np.int64),
             "token_type_ids": np.zeros((1, 4), np.int64)}
    np.savez(tmp_path / "inputs.npz", **feeds)
    assert attnopt.check("minilm", [exported.path], inputs=tmp_path / "inputs.npz").passed
    np.savez(tmp_path / "wrong.npz", ids=feeds["input_ids"])
    result = invoke("check", "minilm", str(exported.path), "--inputs", str(tmp_path / "wrong.npz"))
    assert result.exit_code == 2 and "input names do not match" in result.stderr


@pytest.fixture(scope="module")
def static_bert(tmp_path_factory) -> Path:
    """bert-tiny exported at a static 1x8, once for the cases that need it."""
    folder = tmp_path_factory.mktemp("static")
    attnopt.export("bert-tiny", folder / "static.onnx", dynamic=False, batch=1, seq=8, verify=False)
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "bert-tiny", "{tmp}/x.json"], "unknown artifact type"),
        (["check", "bert-tiny", "{static}/static.onnx", "--shapes", "2x16"], "outside the model's range"),
        (["check", "bert-tiny", "{static}/static.onnx", "--shapes", "2by16"], "bad shape"),
        (["check", "bert-tiny", "{tmp}/model.engine"], "TensorRT"),
    ],
)
def test_bad_check_input_exit_2(static_bert: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "model.engine").write_bytes(b"\0")
    result = invoke(*[a.format(tmp=tmp_path, static=static_bert) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr


def test_cuda_device_without_onnxruntime_gpu(bert: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    result = invoke("check", "bert-tiny", str(bert / "bert.onnx"), "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA provider" in result.stderr and "onnxruntime-gpu" in result.stderr


def test_bisect_finds_the_broken_node(export_cache, tmp_path: Path) -> None:
    """A 6-layer model (the real MiniLM) with one weight broken in layer 3: bisect names its node."""
    exported = export_cache("minilm")  # shared by the session: read only; the broken copy is this test's
    broken = tmp_path / "minilm.broken.onnx"
    node = perturbed_copy(exported.path, broken, lambda i: "layer.3" in i.name and "intermediate" in i.name)
    shutil.copy(exported.sidecar, tmp_path / "minilm.broken.attnopt.json")
    result = attnopt.check("minilm", [exported.path, broken], shapes=[(2, 16)], bisect=True)
    assert not result.passed
    found = result.bisect[str(broken)]
    assert found["node"].startswith(node), found
    assert Path(found["reference"]) == exported.path
