"""Model sources: presets, folders, hub cache, factories, and every way a spec can be wrong."""

from __future__ import annotations

import json

import pytest
import torch

from attnopt.errors import ModelSourceError, UnsupportedTaskError
from attnopt.models import PRESETS, load_model

from conftest import TINY_PRESETS


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_presets_load_and_make_valid_inputs(preset: str) -> None:
    loaded = load_model(preset)
    inputs = loaded.make_inputs(3, 12, seed=1)
    assert list(inputs) == loaded.input_names
    if "input_ids" in inputs:
        vocab = loaded.config.vocab_size
        assert inputs["input_ids"].shape == (3, 12)
        assert 0 <= int(inputs["input_ids"].min()) and int(inputs["input_ids"].max()) < vocab
        mask = inputs["attention_mask"]
        assert mask[0].all() and not mask[-1].all(), "later rows must carry real padding"
        assert (mask.sum(dim=1) >= 1).all()
    with torch.no_grad():
        outputs = loaded.module(*inputs.values())
    assert len(outputs) == len(loaded.output_names)
    assert outputs[0].shape[0] == 3


def test_inputs_are_seeded() -> None:
    loaded = load_model("bert-tiny")
    a, b, c = (loaded.make_inputs(2, 8, seed=s)["input_ids"] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_llama_tiny_is_grouped_query() -> None:
    config = load_model("llama-tiny").config
    assert config.num_key_value_heads < config.num_attention_heads


def test_minilm_is_the_real_model() -> None:
    loaded = load_model("minilm")
    assert loaded.config.hidden_size == 384 and loaded.config.num_hidden_layers == 6
    assert loaded.tokenizer_path is not None
    # real weights, not a random init: the word embeddings of the shipped checkpoint
    emb = loaded.module.model.embeddings.word_embeddings.weight
    assert abs(float(emb.std()) - 0.02) > 1e-3 or abs(float(emb.mean())) > 1e-4


def test_every_preset_has_a_description() -> None:
    assert {"minilm", "bert-base", "bert-tiny", "gpt2", "gpt2-tiny", "llama-tiny", "vit-tiny"} <= set(PRESETS)
    assert all(p.description for p in PRESETS.values())


def test_hf_folder(tmp_path) -> None:
    load_model("bert-tiny").module.model.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), task="sequence-classification")
    assert loaded.source["kind"] == "hf-folder" and loaded.output_names == ["logits"]


def test_folder_without_config(tmp_path) -> None:
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(str(tmp_path))


def test_unknown_architecture(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelSourceError, match="not known to transformers"):
        load_model(str(tmp_path))


def test_uncached_hub_id_fails_fast(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSourceError, match="local Hugging Face cache") as info:
        load_model("someone/not-cached-model")
    assert "hf download" in info.value.hint


def test_missing_path() -> None:
    with pytest.raises(ModelSourceError, match="no such file"):
        load_model("./does/not/exist")


def test_task_the_model_cannot_do() -> None:
    with pytest.raises(UnsupportedTaskError, match="cannot do task"):
        load_model("vit-tiny", task="causal-lm")


FACTORY = '''
import torch
def good():
    return torch.nn.Linear(4, 3), (torch.randn(2, 4),)
def keyword():
    return torch.nn.Bilinear(4, 5, 3), {"input1": torch.randn(2, 4), "input2": torch.randn(2, 5)}
def raises():
    raise RuntimeError("weights missing")
def wrong():
    return "not a module"
def bad_inputs():
    return torch.nn.Linear(4, 3), "x"
def crashes_on_inputs():
    return torch.nn.Linear(4, 3), (torch.randn(2, 7),)
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "factory.py"
    path.write_text(FACTORY)
    return path


def test_factory(factory_file) -> None:
    loaded = load_model(f"{factory_file}:good")
    assert loaded.input_names == ["input_0"] and loaded.output_names == ["output_0"]
    assert loaded.inputs[0].dynamic_axes == {0: "batch"}
    assert loaded.make_inputs(5, 1)["input_0"].shape == (5, 4)


def test_factory_with_keyword_inputs(factory_file) -> None:
    loaded = load_model(f"{factory_file}:keyword")
    assert loaded.input_names == ["input1", "input2"]
    out = loaded.module(*loaded.make_inputs(3, 1).values())
    assert out[0].shape == (3, 3)


@pytest.mark.parametrize(
    "func, message",
    [
        ("raises", "raised RuntimeError: weights missing"),
        ("wrong", "returned str"),
        ("bad_inputs", "example inputs are str"),
        ("crashes_on_inputs", "fails on its own example inputs"),
        ("absent", "has no function 'absent'"),
    ],
)
def test_bad_factories(factory_file, func: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        load_model(f"{factory_file}:{func}")


def test_factory_file_missing(tmp_path) -> None:
    with pytest.raises(ModelSourceError, match="no such file"):
        load_model(f"{tmp_path}/nope.py:build")


def test_hub_id_from_the_local_cache(monkeypatch, tmp_path) -> None:
    """A hub id already in the Hugging Face cache loads offline, from its snapshot folder."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-bert" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    load_model("bert-tiny").module.model.save_pretrained(snapshot)
    (cache / "models--someone--tiny-bert" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-bert" / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    loaded = load_model("someone/tiny-bert")
    assert loaded.source["kind"] == "hub-cache" and loaded.source["path"] == str(snapshot)
    assert loaded.config.hidden_size == 128


def test_task_inferred_from_architectures(tmp_path) -> None:
    from decoder_fixtures import build_llama_folder

    folder = build_llama_folder(tmp_path / "llama")
    assert load_model(str(folder)).task == "causal-lm"  # the config names LlamaForCausalLM
    assert load_model(str(folder)).output_names == ["logits"]  # load_model keeps the cache off unless asked
    with_cache = load_model(str(folder), cache=True)
    assert with_cache.output_names[:2] == ["logits", "present.0.key"] and with_cache.cache.kv_heads == 2
    assert load_model("bert-tiny").task == "feature-extraction"


def test_decoder_inputs_are_valid_with_a_past() -> None:
    loaded = load_model("gemma-tiny", cache=True)  # multi-query, head_dim 64 != hidden/heads 32
    inputs = loaded.make_inputs(3, 4, seed=1, past=5)
    assert inputs["attention_mask"].shape == (3, 9) and inputs["position_ids"].shape == (3, 4)
    assert inputs["past_key_values.0.key"].shape == (3, 1, 5, 64)
    mask = inputs["attention_mask"]
    assert mask[0].all() and mask[-1, 0] == 0 and mask[:, -1].all(), "left padding: the newest token is real"
    assert inputs["position_ids"][-1, -1] == mask[-1].sum() - 1, "positions count real tokens only"
    with torch.no_grad():
        logits, *presents = loaded.module(*inputs.values())
    assert logits.shape == (3, 4, loaded.config.vocab_size) and presents[0].shape == (3, 1, 9, 64)
