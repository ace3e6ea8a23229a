"""Bad input around decoders: one line on stderr with what to do, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli

from decoder_fixtures import build_llama_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("decoder-errors")
    source = build_llama_folder(root / "llama", max_positions=32)
    result = attnopt.export(str(source), root / "out" / "model.onnx", exporter="torchscript", verify=False)
    return root, source, result.path.parent


def _fails(args: list[str], message: str) -> str:
    run = CliRunner().invoke(cli, ["-q", *args])  # quiet: the error line is all that may be printed
    assert run.exit_code == 2, run.output
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], run.output
    assert "Traceback" not in run.output
    return lines[0]


def test_prompt_longer_than_context(folders) -> None:
    _, source, exported = folders
    prompt = " ".join(f"w{i}" for i in range(40))
    for target in (str(exported), str(source)):
        _fails(["generate", target, "--prompt", prompt, "--max-new-tokens", "4"], "beyond the model's context of 32")


def test_model_without_a_causal_lm_head(tmp_path: Path) -> None:
    _fails(["generate", "minilm", "--prompt", "hello"], "has no causal LM head")
    _fails(["export", "minilm", "--task", "causal-lm", "-o", str(tmp_path / "m" / "model.onnx")], "no causal LM head")
    assert not (tmp_path / "m").exists()


def test_feature_extraction_artifact_cannot_generate(tmp_path: Path) -> None:
    attnopt.export("bert-tiny", tmp_path / "b.onnx", exporter="torchscript", verify=False)
    _fails(["generate", str(tmp_path / "b.onnx"), "--prompt", "hi"], "is not a causal LM exported with a KV cache")


def test_folder_missing_its_tokenizer(folders, tmp_path: Path) -> None:
    _, _, exported = folders
    copy = tmp_path / "no-tokenizer"
    shutil.copytree(exported, copy)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (copy / name).unlink(missing_ok=True)
    _fails(["generate", str(copy), "--prompt", "w1"], "has no tokenizer files")


def test_static_decoder_is_refused_before_writing(tmp_path: Path) -> None:
    _fails(["export", "qwen2-tiny", "--static", "-o", str(tmp_path / "q" / "model.onnx")], "needs dynamic axes")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_removes_the_folder_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("attnopt.exporter.export_dynamo", broken)
    monkeypatch.setattr("attnopt.exporter.export_torchscript", broken)
    _fails(["export", "qwen2-tiny", "-o", str(tmp_path / "a" / "model.onnx")], "export failed")
    assert list(tmp_path.iterdir()) == []
    _fails(["export", "qwen2-tiny", "-o", str(tmp_path / "a" / "b" / "model.onnx")], "does not exist")


def test_genai_backend_needs_an_exported_folder() -> None:
    _fails(["generate", "qwen2-tiny", "--prompt", "x", "--backend", "genai"], "runs an exported folder")
