"""Seeded synthetic inputs that are valid for the model: token ids inside the vocabulary, attention
masks with real padding, pixel values in the normalised range."""

from __future__ import annotations

from typing import Any

from attnopt.models.loaded import InputSpec


def resolved_shape(spec: InputSpec, batch: int, seq: int, past: int = 0) -> tuple[int, ...]:
    # "seq" is the encoder presets' name; the others are a cached decoder's (attnopt.models.decoder)
    sizes = {"batch": batch, "seq": seq, "sequence_length": seq, "past_sequence_length": past,
             "total_sequence_length": past + seq}
    shape = list(spec.shape)
    for axis, name in spec.dynamic_axes.items():
        shape[axis] = sizes.get(name, shape[axis])
    return tuple(shape)


def padded_mask(batch: int, seq: int, torch: Any) -> Any:
    """Row 0 is full; later rows are right-padded by growing amounts (at least one real token)."""
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(1, batch):
        real = max(1, seq - (row * seq) // (2 * batch))
        mask[row, real:] = 0
    return mask


def left_padded_mask(batch: int, total: int, torch: Any) -> Any:
    """What a decoder sees in a batch of prompts of different lengths: row 0 full, later rows padded on
    the left by growing amounts (at least one real token)."""
    return padded_mask(batch, total, torch).flip(1)


def position_ids(mask: Any, seq: int) -> Any:
    """Positions count real tokens only (left padding does not shift them); the last `seq` columns."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return positions[:, -seq:].contiguous()


def make_inputs(specs: list[InputSpec], batch: int, seq: int, seed: int = 0, past: int = 0) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    decoder = any(spec.kind == "position_ids" for spec in specs)
    out: dict[str, Any] = {}
    for spec in specs:
        shape = resolved_shape(spec, batch, seq, past)
        dtype = getattr(torch, spec.dtype)
        if spec.kind == "attention_mask" and decoder:
            out[spec.name] = left_padded_mask(shape[0], shape[1], torch).to(dtype)
        elif spec.kind == "position_ids":
            out[spec.name] = position_ids(out["attention_mask"], shape[1]).to(dtype)
        elif spec.kind == "attention_mask":
            out[spec.name] = padded_mask(shape[0], shape[1], torch).to(dtype)
        elif spec.kind == "token_type_ids":
            types = torch.zeros(shape, dtype=dtype)
            types[..., shape[-1] // 2 :] = 1 if spec.value_range and spec.value_range[1] >= 1 else 0
            out[spec.name] = types
        elif spec.kind == "pixel_values":
            out[spec.name] = torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1
        elif dtype == torch.bool:
            out[spec.name] = torch.rand(shape, generator=gen) > 0.5
        elif dtype.is_floating_point:
            out[spec.name] = torch.randn(shape, generator=gen, dtype=dtype)
        else:
            low, high = spec.value_range or (0, 100)
            out[spec.name] = torch.randint(int(low), int(high) + 1, shape, generator=gen, dtype=dtype)
    return out
