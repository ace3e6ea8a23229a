"""The CLI through click's CliRunner, and once through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attnopt import __version__
from attnopt.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", [[], ["export"], ["models"], ["optimize"], ["check"], ["doctor"], ["build"], ["inspect"]])
def test_help_shows_an_example(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from attnopt.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False False")


def test_models_json() -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0 and "llama-tiny" in json.loads(result.output)


def test_export_json(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = invoke("-q", "export", "bert-tiny", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] and payload["exporter"] == "dynamo" and Path(payload["path"]) == out
    assert out.is_file() and (tmp_path / "m.attnopt.json").is_file()


def test_tolerance_failure_exits_1(tmp_path: Path) -> None:
    """An impossible tolerance is a parity failure: exit code 1, and the result says why."""
    result = invoke("-q", "export", "bert-tiny", "-o", str(tmp_path / "m.onnx"), "--atol", "0", "--rtol", "0")
    assert result.exit_code == 1
    assert "differs from PyTorch" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "./nowhere", "-o", "{tmp}/m.onnx"], "no such file or folder"),
        (["export", "{tmp}", "-o", "{tmp}/m.onnx"], "no config.json"),
        (["export", "nobody/uncached-model", "-o", "{tmp}/m.onnx"], "local Hugging Face cache"),
        (["export", "vit-tiny", "--task", "causal-lm", "-o", "{tmp}/m.onnx"], "cannot do task"),
        (["export", "bert-tiny", "-o", "{tmp}/no/such/dir/m.onnx"], "does not exist"),
        (["export", "bert-tiny", "-o", "{tmp}/m.onnx", "--opset", "11"], "too old"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.onnx"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from attnopt.errors import ModelSourceError

    with pytest.raises(ModelSourceError):
        invoke("--debug", "export", "./nowhere", "-o", str(tmp_path / "m.onnx"))


def test_installed_console_script(tmp_path: Path) -> None:
    exe = shutil.which("attnopt")
    assert exe, "the attnopt console script is not installed"
    out = tmp_path / "vit.onnx"
    # torchscript: the script's wiring is under test here (in-process CLI tests cover the default exporter),
    # and it exports vit-tiny in ~12 s where dynamo takes ~20 s
    proc = subprocess.run([exe, "export", "vit-tiny", "-o", str(out), "--exporter", "torchscript"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pass" in proc.stderr and out.is_file()
    again = subprocess.run([exe, "export", "vit-tiny", "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.fixture(scope="module")
def bert_export(export_cache, tmp_path_factory):
    from conftest import copy_export

    folder = tmp_path_factory.mktemp("cli-opt")
    return copy_export(export_cache("bert-tiny"), folder / "bert.onnx")  # the session's verified export


def test_optimize_report(tmp_path: Path, bert_export: Path) -> None:
    report = tmp_path / "report.json"
    out = tmp_path / "bert.ort.onnx"
    result = invoke("-q", "optimize", str(bert_export), "-o", str(out), "--report", str(report), "--require-full")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["target"] == "ort"
    assert set(data["fusions"]) == {"attention", "layernorm", "gelu", "rmsnorm", "rotary"}
    for kind in data["fusions"].values():
        assert {"sites", "fused", "unfused"} <= set(kind)
    assert data["fusions"]["attention"] | {"unfused": []} == data["fusions"]["attention"]
    assert data["fusions"]["attention"]["fused"] == 2
    assert [p["pass"] for p in data["verification"]["passes"]][0] == "cleanup"
    side = json.loads((tmp_path / "bert.ort.attnopt.json").read_text())
    assert side["optimization"]["target"] == "ort" and side["source"]["spec"] == "bert-tiny"


def test_optimize_require_full_fails_on_unfused(tmp_path: Path) -> None:
    import onnx

    import graphs

    src = tmp_path / "probs.onnx"
    onnx.save(graphs.parse(graphs.ATTENTION_PROBS_RETURNED), src)
    result = invoke("optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--require-full")
    assert result.exit_code == 1
    assert "used more than once" in result.stderr  # the coverage table names the reason
    assert "left unfused" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "{tmp}/missing.onnx", "-o", "{tmp}/o.onnx"], "no such file"),
        (["optimize", "{tmp}/junk.onnx", "-o", "{tmp}/o.onnx"], "not a readable ONNX model"),
        (["optimize", "{tmp}/junk.onnx", "-o", "{tmp}/junk.onnx"], "never overwrites its input"),
    ],
)
def test_optimize_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert (tmp_path / "junk.onnx").read_bytes() == b"not a model"
    assert not (tmp_path / "o.onnx").exists()
