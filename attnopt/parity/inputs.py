"""Input sets for a parity check: seeded synthetic inputs at several shapes, an .npz of the user's
inputs, or a text file run through the model's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnopt.errors import AttnoptError
from attnopt.models.loaded import LoadedModel

#: smallest, typical and largest (batch, seq) checked by default; seq is capped by the model's positions
DEFAULT_SHAPES = ((1, 2), (2, 16), (4, 128))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'1x2,2x16,4x128' -> [(1, 2), (2, 16), (4, 128)]."""
    shapes = []
    for part in text.split(","):
        try:
            batch, seq = (int(x) for x in part.lower().split("x"))
        except ValueError as exc:
            raise AttnoptError(f"bad shape {part!r}", "write shapes as BATCHxSEQ, comma-separated: 1x2,2x16") from exc
        if batch < 1 or seq < 1:
            raise AttnoptError(f"bad shape {part!r}: sizes must be at least 1")
        shapes.append((batch, seq))
    return shapes


def _max_positions(loaded: LoadedModel) -> int | None:
    config = loaded.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None) if config is not None else None
        if value:
            return int(value)
    return None


def synthetic(loaded: LoadedModel, shapes: list[tuple[int, int]], seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    limit = _max_positions(loaded)
    sets = []
    for i, (batch, seq) in enumerate(shapes):
        seq = min(seq, limit) if limit else seq
        feeds = {k: v.numpy() for k, v in loaded.make_inputs(batch, seq, seed=seed + i).items()}
        sets.append((f"{batch}x{seq}", feeds))
    return sets


def from_npz(path: Path, loaded: LoadedModel) -> list[tuple[str, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file")
    with np.load(path) as data:
        feeds = {k: data[k] for k in data.files}
    missing, extra = set(loaded.input_names) - set(feeds), set(feeds) - set(loaded.input_names)
    if missing or extra:
        raise AttnoptError(f"{path}: input names do not match the model (missing {sorted(missing)}, "
                           f"unknown {sorted(extra)})", f"the model takes {loaded.input_names}")
    return [(path.name, {n: feeds[n] for n in loaded.input_names})]


def tokenize_text(path: Path, tokenizer_path: str, batch: int | None = None,
                  max_length: int | None = None) -> list[dict[str, np.ndarray]]:
    """The non-empty lines of a text file through a tokenizer, padded per batch of `batch` lines (one
    batch of all lines by default), each cut at `max_length` tokens (default: the tokenizer's limit)."""
    from transformers import AutoTokenizer

    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        raise AttnoptError(f"{path} holds no text")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    size = batch or len(lines)
    batches = []
    for start in range(0, len(lines), size):
        encoded = tokenizer(lines[start:start + size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="np")
        batches.append({k: np.asarray(v) for k, v in encoded.items()})
    return batches


def from_text(path: Path, loaded: LoadedModel) -> list[tuple[str, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file")
    if loaded.tokenizer_path is None:
        raise AttnoptError("this model has no tokenizer to read a text file with", "pass inputs as an .npz instead")
    encoded = tokenize_text(path, loaded.tokenizer_path)[0]
    return [(path.name, {n: encoded[n].astype(np.int64) for n in loaded.input_names if n in encoded})]


def input_sets(loaded: LoadedModel, shapes: list[tuple[int, int]] | None, inputs: Path | None,
               seed: int) -> list[tuple[str, dict[str, np.ndarray]]]:
    if inputs is None:
        return synthetic(loaded, shapes or list(DEFAULT_SHAPES), seed)
    if inputs.suffix == ".npz":
        return from_npz(inputs, loaded)
    return from_text(inputs, loaded)


def check_shapes_fit(artifact: str, declared: dict[str, list], feeds: dict[str, np.ndarray]) -> None:
    """A static axis of the artifact must match the input; otherwise the shape is outside its range."""
    for name, dims in declared.items():
        if name not in feeds:
            raise AttnoptError(f"{artifact} takes an input {name!r} the model does not give")
        shape = feeds[name].shape
        if len(dims) != len(shape) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape)):
            raise AttnoptError(f"{artifact}: input {name} of shape {tuple(shape)} is outside the model's range "
                               f"{tuple(dims)}", "re-export with dynamic axes, or check at the exported shape")
