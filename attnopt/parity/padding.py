"""Which entries of a decoder's outputs carry meaning. A left-padded batch has query rows at padding
positions that attend to nothing: the model's own ops write zeros or a uniform average there, a fused
kernel writes something else, and no real token ever reads them (the mask hides those positions from
every later query). So decoder outputs are compared at the positions the attention mask keeps, and
everywhere else are only required to stay finite (a NaN there would poison later steps through 0 * NaN)."""

from __future__ import annotations

import numpy as np


def cached_decoder_feeds(feeds: dict[str, np.ndarray]) -> bool:
    """A step of a decoder with a KV cache: a (batch, past + sequence) keep-mask and past inputs."""
    mask = feeds.get("attention_mask")
    return mask is not None and mask.ndim == 2 and any(name.startswith("past_key_values") for name in feeds)


def real_entries(output: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The entries of a decoder output at kept positions, flattened: a present (batch, heads, past +
    sequence, size) at the keys the mask keeps, logits (batch, sequence, ...) at the real new tokens.
    Outputs of any other shape come back whole."""
    mask = feeds["attention_mask"].astype(bool)
    batch, total = mask.shape
    new = mask[:, total - feeds["input_ids"].shape[1]:] if "input_ids" in feeds else None
    if output.ndim == 4 and output.shape[0] == batch and output.shape[2] == total:
        return np.concatenate([output[b][:, mask[b], :].ravel() for b in range(batch)])
    if new is not None and output.ndim >= 2 and output.shape[:2] == new.shape:
        return output[new].ravel()
    return output.ravel()


def nonfinite_at_padding(actual: np.ndarray, expected: np.ndarray) -> bool:
    """NaN or Inf anywhere in `actual` where the reference is finite."""
    return actual.shape == expected.shape and bool(np.any(~np.isfinite(actual) & np.isfinite(expected)))
