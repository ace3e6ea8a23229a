"""The accuracy-aware selection: the fewest of the most sensitive layers held back, and a layer named in
held_first held before any ranked one, however harmless it looks alone."""

from __future__ import annotations

from attnopt.parity.tolerance import Tolerance
from attnopt.passes.precision.accuracy import Accuracy
from attnopt.passes.precision.int8 import Layer
from attnopt.passes.precision.sensitivity import select

LAYERS = [Layer(name, "MatMul", "lm_head" if name == "head" else "linear") for name in ("a", "b", "c", "head")]
#: what each layer costs when quantized: in cosine (what the ranking sees) and in top-1 (what the tolerance holds)
COSINE_COST = {"a": 0.02, "b": 0.01, "c": 0.005, "head": 0.001}
TOP1_COST = {"a": 0.02, "b": 0.01, "c": 0.005, "head": 0.10}


def _trial(quantized: list[str]) -> Accuracy:
    return Accuracy(token_cosine=1 - sum(COSINE_COST[n] for n in quantized),
                    top1=1 - sum(TOP1_COST[n] for n in quantized), kl=0.0)


def test_ranked_by_error_alone_the_head_is_held_last() -> None:
    selection = select(LAYERS, _trial, Tolerance(atol=None, rtol=None, top1=0.95), held_is_exact=False)
    assert selection.passed and [layer.name for layer in selection.kept] == ["a", "b", "c", "head"]


def test_held_first_holds_the_head_before_the_ranked_layers() -> None:
    selection = select(LAYERS, _trial, Tolerance(atol=None, rtol=None, top1=0.95), held_is_exact=False,
                       held_first=frozenset({"head"}))
    assert selection.passed and [layer.name for layer in selection.kept] == ["head"]
    assert sorted(selection.quantized) == ["a", "b", "c"]


def test_nothing_is_held_when_everything_quantized_passes() -> None:
    selection = select(LAYERS, _trial, Tolerance(atol=None, rtol=None, top1=0.8), held_first=frozenset({"head"}))
    assert selection.passed and not selection.kept and len(selection.quantized) == 4
