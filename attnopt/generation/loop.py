"""The one generation loop: left-padded prompts, an always-present past (empty on the first step), then one
token a step with the presents fed back as the next past. Any step function runs it (PyTorch, ONNX Runtime,
a TensorRT engine): it maps the graph's named inputs to its named outputs as numpy arrays."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from attnopt.models.decoder import CacheLayout

StepFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Generation:
    """Per row: the new tokens (a finished row stops at its end-of-sequence token); and the timings."""

    tokens: list[list[int]]
    prefill_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: tokens after the first over the time they took."""
        return len(self.decode_s) / sum(self.decode_s) if self.decode_s and sum(self.decode_s) > 0 else 0.0


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of a batch, padded on the left so every row's next token is last."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def positions(mask: np.ndarray, seq: int) -> np.ndarray:
    """Positions count real tokens only, so left padding does not shift them; the last `seq` columns."""
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -seq:].astype(np.int64)


def empty_past(layout: CacheLayout, batch: int) -> dict[str, np.ndarray]:
    shape = (batch, layout.kv_heads, 0, layout.head_dim)
    return {name: np.zeros(shape, dtype=np.float32) for name in layout.past_names()}


def first_feeds(ids: np.ndarray, mask: np.ndarray, layout: CacheLayout) -> dict[str, np.ndarray]:
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask, ids.shape[1]),
            **empty_past(layout, ids.shape[0])}


def next_feeds(feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], new_ids: np.ndarray,
               layout: CacheLayout) -> dict[str, np.ndarray]:
    """The feeds after `feeds`: new_ids [batch, seq] appended, the mask grown by seq, presents as the past."""
    batch, seq = new_ids.shape
    mask = np.concatenate([feeds["attention_mask"], np.ones((batch, seq), dtype=np.int64)], axis=1)
    past = {p: outputs[q] for p, q in zip(layout.past_names(), layout.present_names())}
    return {"input_ids": new_ids.astype(np.int64), "attention_mask": mask, "position_ids": positions(mask, seq), **past}


def greedy(step: StepFn, prompts: list[list[int]], layout: CacheLayout, max_new_tokens: int, *,
           eos_ids: tuple[int, ...] = (), pad_id: int = 0,
           on_tokens: Callable[[list[int]], None] | None = None) -> Generation:
    """Greedy decoding of every prompt at once. A row that produced an end-of-sequence token is finished:
    it is fed `pad_id` from then on (as Hugging Face `generate` does) and its tokens stop there.
    `on_tokens` gets each step's new token per row (streaming)."""
    ids, mask = left_padded(prompts, pad_id)
    feeds = first_feeds(ids, mask, layout)
    result = Generation([[] for _ in prompts])
    finished = np.zeros(len(prompts), dtype=bool)
    for index in range(max_new_tokens):
        start = time.perf_counter()
        outputs = step(feeds)
        chosen = outputs["logits"][:, -1, :].argmax(-1)
        chosen = np.where(finished, pad_id, chosen)
        elapsed = time.perf_counter() - start
        if index == 0:
            result.prefill_s = elapsed
        else:
            result.decode_s.append(elapsed)
        for row, token in enumerate(chosen):
            if not finished[row]:
                result.tokens[row].append(int(token))
        if on_tokens:
            on_tokens([int(t) for t in chosen])
        finished |= np.isin(chosen, eos_ids)
        if finished.all() or index == max_new_tokens - 1:
            break
        feeds = next_feeds(feeds, outputs, chosen[:, None], layout)
    return result
