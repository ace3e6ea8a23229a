"""A timing point: where on a model's inputs one latency is measured. An encoder's is a batch x sequence
size; a decoder's is a phase (prefill: a prompt on an empty past; decode: one token on a past of some
length), its batch, its new tokens and its past. A point is its labels in order, so rows, comparisons,
sentences and plots name it alike."""

from __future__ import annotations

from typing import Any

#: the labels a point may carry, in the order tables show them
KEYS = ("phase", "batch", "seq", "past")
PREFILL, DECODE = "prefill", "decode"

Point = tuple[tuple[str, Any], ...]


def point(**labels: Any) -> Point:
    """point(batch=1, seq=128); the labels kept in KEYS' order."""
    unknown = set(labels) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown point labels: {sorted(unknown)}")
    return tuple((k, labels[k]) for k in KEYS if k in labels)


def labels_of(item: dict[str, Any]) -> dict[str, Any]:
    """The point labels of a row or comparison."""
    return {k: item[k] for k in KEYS if k in item}


def point_of(item: dict[str, Any]) -> Point:
    """The point a row or comparison was measured at."""
    return tuple(labels_of(item).items())


def describe(item: dict[str, Any] | Point) -> str:
    """'batch 1 seq 128'; 'prefill, batch 1, 128 tokens'; 'decode, batch 1, past 512'."""
    p = dict(item) if isinstance(item, tuple) else labels_of(item)
    if p.get("phase") == PREFILL:
        return f"prefill, batch {p['batch']}, {p['seq']} tokens"
    if p.get("phase") == DECODE:
        return f"decode, batch {p['batch']}, past {p['past']}"
    return " ".join(f"{k} {v}" for k, v in p.items())


def tokens_per_s(item: dict[str, Any], ms: float) -> float | None:
    """Tokens a decoder point handles per second at `ms` per call (prompt tokens for prefill, new tokens for
    decode); None for an encoder point."""
    if "phase" not in item or not ms or ms <= 0:
        return None
    return item["batch"] * item["seq"] / (ms / 1000.0)
