"""The residual Add in front of a norm (x = a + b, with perhaps a 1-D bias added to a just before), for
targets whose norm kernels take the residual and bias in (ONNX Runtime's Skip*Normalization)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from attnopt.passes.fusion.match import one_d_const, other_input
from attnopt.passes.graph_utils import only_consumer, producer


@dataclass
class Residual:
    a: ir.Value
    b: ir.Value
    bias: ir.Value | None
    #: the sum itself: later layers may read it (the residual stream goes on)
    total: ir.Value


def _same_known_shape(a: ir.Value, b: ir.Value) -> bool:
    """Both shapes fully known (ints or named symbols) and equal: the Add has no broadcast."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape) or len(a.shape) not in (2, 3):
        return False
    for x, y in zip(a.shape, b.shape):
        if isinstance(x, int) and isinstance(y, int):
            if x != y:
                return False
        elif isinstance(x, int) or isinstance(y, int) or not x.value or x.value != y.value:
            return False
    return True


def residual_add(x: ir.Value) -> Residual | None:
    """x as the sum of two same-shaped tensors (no broadcast), or None."""
    add = producer(x, "Add")
    if add is None or not _same_known_shape(add.inputs[0], add.inputs[1]):
        return None
    a, b = add.inputs
    for first, second in ((a, b), (b, a)):
        inner = producer(first, "Add")
        if inner is not None and only_consumer(first) is add:
            const = next((v for v in inner.inputs if one_d_const(v, None)), None)
            if const is not None:
                return Residual(other_input(inner, const), second, const, x)
    return Residual(a, b, None, x)
