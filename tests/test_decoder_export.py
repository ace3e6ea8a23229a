"""A decoder with a KV cache, end to end: export into a runtime folder, verification over generations,
`attnopt check`, `attnopt generate` on every backend, and onnxruntime-genai loading the folder as it is."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli


@pytest.fixture(scope="module")
def exported(tiny_llama_export):
    """A tiny Llama folder (GQA 4/2 heads, a tokenizer with a chat template) exported with the dynamo exporter
    into an output folder that did not exist (conftest's session export, shared with test_decoder_folders)."""
    return tiny_llama_export


def test_graph_has_the_ecosystem_names_and_axes(exported) -> None:
    _, result = exported
    model = onnx.load(str(result.path), load_external_data=False)

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in model.graph.input}
    outputs = {v.name: dims(v) for v in model.graph.output}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["attention_mask"] == ["batch", "total_sequence_length"]
    # kv_heads 2 and head_dim 16 from the config (hidden/heads would also be 16, kv heads 4 would be wrong)
    assert inputs["past_key_values.1.value"] == ["batch", 2, "past_sequence_length", 16]
    assert list(outputs) == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert outputs["present.0.key"] == ["batch", 2, "total_sequence_length", 16]
    assert result.exporter == "dynamo"


def test_verified_over_generations(exported) -> None:
    _, result = exported
    parity = result.verification
    assert result.ok and parity.passed, parity.first_failure
    scenarios = {(s.scenario, s.seq > 1, s.past > 0) for s in parity.steps}
    assert ("prefill (empty past)", True, False) in scenarios
    assert ("decode", False, True) in scenarios
    assert ("chunked prefill", True, True) in scenarios
    assert any(s.batch == 2 for s in parity.steps), "a left-padded batch of two prompts"
    assert parity.tokens.first_divergence is None and len(parity.tokens.expected[0]) >= 1
    assert len(parity.layer_max_abs) == 2 and max(parity.layer_max_abs) < 1e-4


def test_runtime_folder(exported) -> None:
    _, result = exported
    folder = result.path.parent
    for name in ("model.onnx", "model.attnopt.json", "tokenizer.json", "generation_config.json", "genai_config.json"):
        assert (folder / name).is_file(), name
    genai = json.loads((folder / "genai_config.json").read_text())["model"]
    assert genai["decoder"]["num_key_value_heads"] == 2 and genai["decoder"]["head_size"] == 16
    assert genai["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["decoder"]["cache"]["kv_heads"] == 2 and sidecar["task"] == "causal-lm"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_check_command_checks_generations(exported, tmp_path: Path) -> None:
    source, result = exported
    report = tmp_path / "parity.json"
    run = CliRunner().invoke(cli, ["check", str(source), str(result.path), "--json", str(report)])
    assert run.exit_code == 0, run.output
    data = json.loads(report.read_text())
    cases = data["cases"]
    labels = [c["inputs"] for c in cases]
    assert any(label.startswith("decode step") for label in labels)
    assert labels[-1] == "greedy generation vs Hugging Face generate" and cases[-1]["passed"]
    # only what was measured: a step's cosine is the lowest over its logits and presents, the tokens have none
    generation = data["generation"][str(result.path)]
    assert generation["passed"] and generation["precision"] == "fp32" and generation["tokens"]["identical"]
    steps = generation["steps"]
    assert len(cases) == len(steps) + 1
    for case, step in zip(cases, steps):
        assert 0.999 < step["cosine"] <= step["logits_cosine"] < 1.000001
        assert case["cosine"] == step["cosine"] and case["max_abs"] >= step["logits_max_abs"]
        assert case["max_rel"] is None and case["mean_abs"] is None
    assert cases[-1]["cosine"] is None and cases[-1]["max_abs"] is None


def test_generate_backends_agree(exported) -> None:
    from attnopt.generation.generate import generate

    source, result = exported
    streamed: list[str] = []
    ort = generate(result.path.parent, "w5 w6 w7", max_new_tokens=6, on_text=streamed.append)
    torch = generate(str(source), "w5 w6 w7", max_new_tokens=6)
    assert ort.backend == "ort" and torch.backend == "torch"
    assert ort.tokens == torch.tokens and len(ort.tokens) >= 1
    assert "".join(streamed) == ort.text and ort.time_to_first_token_s > 0


def test_onnxruntime_genai_loads_the_folder_and_generates_hf_tokens(exported) -> None:
    """The real client: onnxruntime-genai reads the folder as it is (no attnopt code in its loop)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (CI installs it)")
    from attnopt.generation.genai_backend import genai_greedy
    from attnopt.models import load_model
    from attnopt.parity.generation import hf_generate, special_ids

    source, result = exported
    loaded = load_model(str(source), cache=True)
    eos, pad = special_ids(loaded)
    for prompt in ([8, 9, 10, 4], [100, 7, 42, 300, 5, 6, 250]):
        expected = hf_generate(loaded, [prompt], 8, eos, pad)[0]
        assert genai_greedy(result.path.parent, prompt, 8).tokens[0] == expected


def test_generate_cli_streams(exported) -> None:
    _, result = exported
    run = CliRunner().invoke(cli, ["generate", str(result.path.parent), "--prompt", "w5 w6", "--max-new-tokens", "4",
                                   "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["backend"] == "ort"


def test_no_cache_keeps_todays_graph(tmp_path: Path) -> None:
    result = attnopt.export("gpt2-tiny", tmp_path / "g.onnx", task="causal-lm", cache=False, exporter="torchscript")
    model = onnx.load(str(result.path), load_external_data=False)
    assert [v.name for v in model.graph.input] == ["input_ids", "attention_mask"]
    assert [v.name for v in model.graph.output] == ["logits"]
    assert result.ok and not result.runtime_files


def test_default_output_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(cli, ["export", "bert-tiny", "--no-verify", "--exporter", "torchscript"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "bert-tiny.onnx").is_file() and "bert-tiny.onnx" in run.output
    run = CliRunner().invoke(cli, ["export", "qwen2-tiny", "--no-verify", "--exporter", "torchscript"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "qwen2-tiny" / "model.onnx").is_file() and (tmp_path / "qwen2-tiny" / "genai_config.json").is_file()


def test_torchscript_fallback_with_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("")  # an empty message must not crash the fallback note

    monkeypatch.setattr("attnopt.exporter.export_dynamo", broken)
    result = attnopt.export("qwen2-tiny", tmp_path / "q" / "model.onnx")
    assert result.exporter == "torchscript" and "fell back" in result.notes[0]
    assert result.ok, result.verification.first_failure
    session_inputs = [v.name for v in onnx.load(str(result.path), load_external_data=False).graph.input]
    assert session_inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]


def test_export_leaves_logging_and_rng_alone() -> None:
    import logging

    import torch

    from attnopt.console import Progress
    from attnopt.exporter import _quiet_torch_logs

    logger = logging.getLogger("torch.onnx")
    before = logger.level
    logger.setLevel(logging.DEBUG)
    with _quiet_torch_logs(Progress(1)):
        assert logger.level == logging.ERROR
    assert logger.level == logging.DEBUG, "export changed the caller's logging for good"
    logger.setLevel(before)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attnopt.load_model("mistral-tiny", cache=True)
    assert torch.equal(torch.rand(3), expected), "loading a random-init preset reseeded the global generator"


def test_check_fails_a_decoder_whose_cache_path_is_wrong(exported, tmp_path: Path) -> None:
    """A graph that is right on the prefill and wrong once a past exists (the past's keys scaled on the way
    in) passes a one-step check; over generations it fails, exit 1, naming the first decode step."""
    from onnx import helper

    source, result = exported
    model = onnx.load(str(result.path))
    past = "past_key_values.0.key"
    for node in model.graph.node:  # every reader of the past reads it scaled by 1.5
        node.input[:] = [f"{past}.scaled" if name == past else name for name in node.input]
    scale = helper.make_tensor("scale_1_5", onnx.TensorProto.FLOAT, [], [1.5])
    model.graph.initializer.append(scale)
    model.graph.node.insert(0, helper.make_node("Mul", [past, "scale_1_5"], [f"{past}.scaled"]))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    run = CliRunner().invoke(cli, ["-q", "check", str(source), str(broken)])
    assert run.exit_code == 1, run.output
    assert "decode step 1" in run.output and "inputs prefill" not in run.output
