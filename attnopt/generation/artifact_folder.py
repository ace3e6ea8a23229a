"""Open what `attnopt generate` is pointed at: an exported decoder folder (or its model.onnx), with its
cache layout from the sidecar and its tokenizer from the folder. Every way it can be wrong is one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnopt.errors import AttnoptError
from attnopt.exporter.sidecar import read_sidecar
from attnopt.generation.runtime_folder import declares_shared_buffer
from attnopt.models.decoder import CacheLayout
from attnopt.models.tokenizer import has_tokenizer


@dataclass
class DecoderFolder:
    folder: Path
    model: Path
    layout: CacheLayout
    eos_ids: tuple[int, ...]
    pad_id: int
    #: its genai_config.json runs past and present in one buffer (proven when the folder was written)
    shares_buffer: bool = False


def is_decoder_folder(path: Path) -> bool:
    model = path / "model.onnx" if path.is_dir() else path
    return model.suffix == ".onnx" and model.is_file()


def open_decoder_folder(path: Path) -> DecoderFolder:
    model = path / "model.onnx" if path.is_dir() else path
    if not model.is_file():
        raise AttnoptError(f"{path}: no model.onnx here", "export the model first: attnopt export MODEL -o DIR/model.onnx")
    sidecar = read_sidecar(model) or {}
    cache = (sidecar.get("decoder") or {}).get("cache")
    if not cache:
        raise AttnoptError(f"{model} is not a causal LM exported with a KV cache, so it cannot generate",
                           "export a decoder with `attnopt export MODEL --task causal-lm` (with its cache)")
    if not has_tokenizer(model.parent):
        raise AttnoptError(f"{model.parent} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...)",
                           "export from a model that ships its tokenizer, or copy its tokenizer files into the folder")
    eos_ids, pad_id = special_ids_of(model.parent)
    return DecoderFolder(model.parent, model, CacheLayout(**cache), eos_ids, pad_id,
                         declares_shared_buffer(model))


def special_ids_of(folder: Path) -> tuple[tuple[int, ...], int]:
    """End-of-sequence ids and the pad id, from the folder's generation_config.json."""
    import json

    config: dict[str, Any] = {}
    if (folder / "generation_config.json").is_file():
        config = json.loads((folder / "generation_config.json").read_text())
    eos = config.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    pad = config.get("pad_token_id")
    return eos_ids, int(pad if pad is not None else (eos_ids[0] if eos_ids else 0))
