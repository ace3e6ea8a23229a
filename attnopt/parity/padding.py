"""Which entries of a model's outputs carry meaning: those at the positions the attention mask keeps.
An encoder's padding positions are read by nothing downstream. A left-padded decoder batch has query rows
at padding positions that attend to nothing: the model's own ops write zeros or a uniform average there, a
fused kernel writes something else, and no real token ever reads them (the mask hides those positions from
every later query). Everywhere else outputs are only required to stay finite (a NaN there would poison
later steps through 0 * NaN)."""

from __future__ import annotations

from typing import Any

import numpy as np


def cached_decoder_feeds(feeds: dict[str, Any]) -> bool:
    """A step of a decoder with a KV cache: a (batch, past + sequence) keep-mask and past inputs."""
    mask = feeds.get("attention_mask")
    return mask is not None and mask.ndim == 2 and any(name.startswith("past_key_values") for name in feeds)


def unpadded(output: Any, feeds: dict[str, Any]) -> Any:
    """The output at the positions the attention mask keeps, as rows (kept positions, ...): a cached
    decoder's present (batch, heads, past + sequence, size) at the keys the mask keeps, any (batch, seq, ...)
    output (hidden states, logits) at its real tokens, the new ones where there is a past. Padding
    positions are read by nothing downstream (pooling and heads mask them, later queries never see them),
    and kernels and reduced precision leave them other than the model's own ops do. Outputs of any other
    shape come back as they are."""
    mask = feeds.get("attention_mask")
    if output is None or mask is None or mask.ndim != 2 or output.ndim < 3 or mask.all():
        return output
    keep = mask.astype(bool)
    batch, total = keep.shape
    if cached_decoder_feeds(feeds) and output.ndim == 4 and output.shape[0] == batch and output.shape[2] == total:
        return output.transpose(0, 2, 1, 3)[keep]
    seq = feeds["input_ids"].shape[1] if "input_ids" in feeds else total
    new = keep[:, total - seq:]
    return output[new] if output.shape[:2] == new.shape else output


def at_last_positions(name: str, expected: np.ndarray, actual: np.ndarray | None,
                      feeds: dict[str, Any]) -> np.ndarray:
    """The reference's logits at each row's last real token where the artifact computes only those (a decoder
    whose LM head reads the last token, passes.last_logits): the last new position the attention mask keeps,
    the last position under left padding, the last prompt token under right padding."""
    if name != "logits" or actual is None or actual.ndim != 3 or expected.ndim != 3 or actual.shape[1] != 1 \
            or expected.shape[1] == 1 or actual.shape[::2] != expected.shape[::2]:
        return expected
    mask = feeds.get("attention_mask")
    seq = expected.shape[1]
    if mask is None or mask.ndim != 2 or mask.shape[1] < seq:
        return expected[:, -1:]
    new = mask[:, -seq:].astype(bool)
    last = seq - 1 - np.argmax(new[:, ::-1], axis=1)  # the last kept position of each row
    return expected[np.arange(expected.shape[0]), last][:, None]


def nonfinite_where_finite(actual: np.ndarray, expected: np.ndarray) -> bool:
    """NaN or Inf anywhere in `actual` where the reference is finite."""
    return actual.shape == expected.shape and bool(np.any(~np.isfinite(actual) & np.isfinite(expected)))
