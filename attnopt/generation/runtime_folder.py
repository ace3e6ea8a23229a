"""The files beside a decoder's model.onnx that make its folder loadable by a runtime as it is: the
tokenizer, the generation config, and onnxruntime-genai's genai_config.json (which names the graph's inputs,
outputs and cache layout, so that runtime needs no attnopt code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnopt.models.decoder import CacheLayout
from attnopt.models.loaded import LoadedModel

GENAI_CONFIG = "genai_config.json"
#: model types onnxruntime-genai knows by name; any other decoder is described as a llama-like decoder,
#: which onnxruntime-genai runs from the input/output names and cache layout alone
_GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "olmo", "granite"}
#: genai_config's names for the graph's inputs and outputs, as attnopt's export writes them
INPUT_NAMES = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
OUTPUT_NAMES = {"logits": "logits", "present_key_names": "present.%d.key",
                 "present_value_names": "present.%d.value"}


def read_genai_config(folder: Path) -> dict[str, Any] | None:
    """A folder's genai_config.json, or None where it has none that reads as one."""
    try:
        content = json.loads((folder / GENAI_CONFIG).read_text())
        return content if isinstance(content, dict) and isinstance(content["model"]["decoder"], dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def named_model(folder: Path) -> str | None:
    """The model file a folder's genai_config.json names (None: no readable genai_config.json)."""
    config = read_genai_config(folder)
    return config["model"]["decoder"].get("filename") if config else None


def declares_shared_buffer(model: Path) -> bool:
    """Whether the genai_config.json beside `model` names it and runs its past and present in one buffer."""
    config = read_genai_config(model.parent)
    search = config.get("search") if config else None
    return bool(config) and config["model"]["decoder"].get("filename") == model.name and \
        isinstance(search, dict) and search.get("past_present_share_buffer") is True


def _ids(value: Any) -> int | list[int] | None:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value] if len(value) != 1 else int(value[0])
    return int(value) if value is not None else None


def genai_config(loaded: LoadedModel, model_file: str, eos_ids: tuple[int, ...], pad_id: int) -> dict[str, Any]:
    config = loaded.config
    return layout_genai_config(loaded.cache, getattr(config, "model_type", "llama"),
                               getattr(config, "bos_token_id", None), model_file, eos_ids, pad_id)


def layout_genai_config(layout: CacheLayout, model_type: str, bos: Any, model_file: str, eos_ids: tuple[int, ...],
                        pad_id: int) -> dict[str, Any]:
    """genai_config.json for a graph with attnopt's names, from its cache layout and special ids."""
    context = int(layout.max_positions or 2048)
    return {
        "model": {
            "bos_token_id": _ids(bos),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": layout.head_dim,
                "hidden_size": layout.hidden_size,
                "inputs": dict(INPUT_NAMES),
                "outputs": dict(OUTPUT_NAMES),
                "num_attention_heads": layout.num_heads,
                "num_hidden_layers": layout.num_layers,
                "num_key_value_heads": layout.kv_heads,
            },
            "eos_token_id": _ids(list(eos_ids)),
            "pad_token_id": pad_id,
            "type": model_type if model_type in _GENAI_TYPES else "llama",
            "vocab_size": layout.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_runtime_files(folder: Path, loaded: LoadedModel, model_file: str) -> list[str]:
    """Writes the runtime files into `folder`; returns their names."""
    from attnopt.parity.generation import special_ids

    eos_ids, pad_id = special_ids(loaded)
    written = []
    if loaded.tokenizer_path is not None:
        written += [Path(p).name for p in loaded.load_tokenizer().save_pretrained(str(folder))]
    generation = getattr(loaded.hf_model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(folder))
        written.append("generation_config.json")
    content = genai_config(loaded, model_file, eos_ids, pad_id)
    (folder / GENAI_CONFIG).write_text(json.dumps(content, indent=2) + "\n")
    written.append(GENAI_CONFIG)
    return sorted(set(written))
