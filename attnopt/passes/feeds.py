"""Valid inputs for an ONNX model without its PyTorch source: from the export sidecar where there is
one, else from input names and dtypes (token ids, attention masks with padding, pixel values)."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnopt.models.inputs import padded_mask

#: the two shapes every pass is verified at: different batch and sequence, so baked shapes show
VERIFY_SHAPES = ((2, 16), (3, 29))


def _kind(name: str, dtype: np.dtype, side: dict[str, Any]) -> str:
    if side.get("kind"):
        return side["kind"]
    lowered = name.lower()
    if "mask" in lowered:
        return "attention_mask"
    if "token_type" in lowered:
        return "token_type_ids"
    if "position" in lowered:
        return "position_ids"
    if "pixel" in lowered:
        return "pixel_values"
    return "token_ids" if np.issubdtype(dtype, np.integer) else "tensor"


def _dims(shape: list, batch: int, seq: int) -> tuple[int, ...]:
    sizes = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            sizes.append(d)
        elif d == "batch" or (i == 0 and d != "seq"):
            sizes.append(batch)
        else:
            sizes.append(seq)
    return tuple(sizes)


def make_feeds(inputs: list[dict[str, Any]], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """`inputs`: [{"name", "dtype", "shape", optional "kind", "value_range"}] as in the export sidecar."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        dtype = np.dtype(spec["dtype"])
        shape = _dims(spec["shape"], batch, seq)
        kind = _kind(spec["name"], dtype, spec)
        low, high = spec.get("value_range") or (0, 99)
        if kind == "attention_mask" and len(shape) == 2:
            import torch

            value = padded_mask(shape[0], shape[1], torch).numpy()
        elif kind == "token_type_ids":
            value = np.zeros(shape)
            if high >= 1:
                value[..., shape[-1] // 2:] = 1
        elif kind == "position_ids":
            value = np.broadcast_to(np.arange(shape[-1]), shape)
        elif kind == "pixel_values":
            value = rng.uniform(-1, 1, shape)
        elif dtype == np.bool_:
            value = rng.random(shape) > 0.5
        elif np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape)
        else:
            value = rng.integers(int(low), int(high) + 1, shape)
        feeds[spec["name"]] = np.ascontiguousarray(value).astype(dtype)
    return feeds


def model_inputs(model: Any, sidecar: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The graph inputs of an onnx-ir model, enriched with what the sidecar knows about them."""
    known = {i["name"]: i for i in (sidecar or {}).get("inputs", [])}
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = [d if isinstance(d, int) else (d.value if d.value else None) for d in (value.shape or [])]
        spec = {"name": value.name, "dtype": value.dtype.numpy().name, "shape": shape}
        extra = known.get(value.name, {})
        spec.update({k: extra[k] for k in ("kind", "value_range") if k in extra})
        specs.append(spec)
    return specs
