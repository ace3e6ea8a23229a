"""Accuracy-aware int8: how much each layer alone costs in accuracy when quantized, and the fewest
most sensitive layers to hold in fp32 so that the whole model meets the tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from attnopt.console import SILENT, Progress
from attnopt.parity.tolerance import Tolerance
from attnopt.passes.precision.accuracy import Accuracy
from attnopt.passes.precision.int8 import Layer

#: quantize(nodes) -> the accuracy of the model with exactly those nodes in int8
Trial = Callable[[list[str]], Accuracy]


@dataclass
class Selection:
    quantized: list[str]
    kept: list[Layer]
    accuracy: Accuracy
    passed: bool
    failure: str
    sensitivity: list[dict[str, Any]] = field(default_factory=list)


def rank_layers(layers: list[Layer], trial: Trial, progress: Progress = SILENT) -> list[tuple[Layer, Accuracy]]:
    """Each layer quantized alone, most harmful first."""
    ranked = []
    with progress.step(f"Measuring the sensitivity of {len(layers)} layers"):
        for layer in layers:
            ranked.append((layer, trial([layer.name])))
    return sorted(ranked, key=lambda item: -item[1].error)


def select(layers: list[Layer], trial: Trial, criteria: Tolerance, accuracy_aware: bool = True,
           progress: Progress = SILENT, held_is_exact: bool = True, held_first: frozenset[str] = frozenset()
           ) -> Selection:
    """All layers quantized when that meets `criteria`; else, with `accuracy_aware`, the fewest of the most
    sensitive layers held back (binary search over how many) that meets it. `held_is_exact`: a held layer
    is fp32, so holding them all is the fp32 model itself; otherwise (int4 holds layers at 8 bits) holding
    them all is measured too, and may still miss. `held_first`: layers held back before any ranked one, whatever
    their error alone (a 4-bit LM head moves the next token most, yet its logits' cosine barely does)."""
    names = [layer.name for layer in layers]
    with progress.step(f"Quantizing {len(names)} layers and measuring"):
        accuracy = trial(names)
    failure = accuracy.failure(criteria)
    if not failure or not accuracy_aware or not layers:
        return Selection(names, [], accuracy, not failure, failure)
    ranked = rank_layers(layers, trial, progress)
    table = [{**layer.to_dict(), "error_alone": round(acc.error, 7), **acc.to_dict()} for layer, acc in ranked]
    order = sorted((layer for layer, _ in ranked), key=lambda layer: layer.name not in held_first)  # stable
    results: dict[int, Accuracy] = {0: accuracy}

    def keep_top(k: int) -> Accuracy:
        if k not in results:
            held = {layer.name for layer in order[:k]}
            quantized = [n for n in names if n not in held]
            results[k] = trial(quantized) if quantized or not held_is_exact else Accuracy()
        return results[k]

    low, high = 0, len(order)  # keeping `low` fails; keeping `high` (all held back) passes, or nothing does
    if keep_top(high).failure(criteria):
        final = keep_top(high)
        return Selection([], order, final, False, final.failure(criteria), table)
    with progress.step("Searching for the layers to keep in fp32"):
        while high - low > 1:
            middle = (low + high) // 2
            if keep_top(middle).failure(criteria):
                low = middle
            else:
                high = middle
    final = keep_top(high)
    held = {layer.name for layer in order[:high]}
    return Selection([n for n in names if n not in held], order[:high], final, not final.failure(criteria),
                     final.failure(criteria), table)
