"""What a causal LM with a KV cache is timed on: prefill (a prompt on an empty past) and decode (one token on
a past of length p) at several past lengths, fed exactly as the generation loop feeds those steps
(attnopt.generation.loop). The past is seeded random values of the cache's shape: latency does not depend
on which keys and values are cached, only on how many."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnopt.errors import AttnoptError
from attnopt.generation.loop import first_feeds, next_feeds
from attnopt.latency.points import DECODE, PREFILL, Point, point
from attnopt.models.decoder import CacheLayout

DEFAULT_PASTS = (0, 128, 512)


def model_file(path: Path) -> Path:
    """A decoder folder stands for its model.onnx; any other path for itself."""
    return path / "model.onnx" if path.is_dir() else path


def is_cached_decoder_file(path: Path) -> bool:
    """An ONNX graph that takes a past (read from its inputs, weights left on disk)."""
    from attnopt.parity.artifacts import open_artifact
    from attnopt.parity.check import is_cached_decoder

    return path.suffix == ".onnx" and is_cached_decoder(open_artifact(path))


def decode_feeds(layout: CacheLayout, batch: int, past: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One new token on a past of `past` tokens: the step after a sequence of that length."""
    so_far = {"attention_mask": np.ones((batch, past), dtype=np.int64)}
    shape = (batch, layout.kv_heads, past, layout.head_dim)
    presents = {name: rng.standard_normal(shape).astype(np.float32) for name in layout.present_names()}
    new = rng.integers(0, layout.vocab_size, size=(batch, 1))
    return next_feeds(so_far, presents, new, layout)


def prefill_feeds(layout: CacheLayout, batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(0, layout.vocab_size, size=(batch, seq)).astype(np.int64)
    return first_feeds(ids, np.ones_like(ids), layout)


def decoder_points(layout: CacheLayout, batches: list[int], prompts: list[int], pasts: list[int], *,
                   seed: int = 0) -> tuple[dict[Point, dict[str, np.ndarray]], list[str]]:
    """Feeds per point (prefill at each prompt length, decode at each past length, per batch), and a note for
    each point the model's context cannot hold (left out)."""
    if any(n < 1 for n in [*batches, *prompts]) or any(p < 0 for p in pasts):
        raise AttnoptError("--batch and --seq must be at least 1 and --past at least 0")
    context = layout.max_positions
    rng = np.random.default_rng(seed)
    feeds: dict[Point, dict[str, np.ndarray]] = {}
    notes = []
    for batch in batches:
        for seq in prompts:
            if context and seq > context:
                notes.append(f"prefill of {seq} tokens left out: the model's context is {context} tokens")
                continue
            feeds[point(phase=PREFILL, batch=batch, seq=seq, past=0)] = prefill_feeds(layout, batch, seq, rng)
        for past in pasts:
            if context and past + 1 > context:
                notes.append(f"decode at past {past} left out: the model's context is {context} tokens")
                continue
            feeds[point(phase=DECODE, batch=batch, seq=1, past=past)] = decode_feeds(layout, batch, past, rng)
    if not feeds:
        raise AttnoptError(f"no prefill or decode point fits the model's context of {context} tokens",
                           "choose a shorter --seq and smaller --past values")
    return feeds, list(dict.fromkeys(notes))


def layout_of(loaded: Any) -> CacheLayout:
    """The loaded model's cache layout, or a one-line error when it was loaded without its cache."""
    if getattr(loaded, "cache", None) is None:
        raise AttnoptError("the artifacts are decoders with a KV cache but the model was loaded without one",
                           "load it with its cache: attnopt.load_model(spec, 'causal-lm', cache=True)")
    return loaded.cache
