"""Matching helpers shared by the elementwise recognisers (layernorm, RMSNorm, GELU)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.sites import Reject
from attnopt.passes.graph_utils import attr, const_array, const_scalar, only_consumer, producer
from attnopt.passes.shapes import static_dims


def other_input(node: ir.Node, value: ir.Value) -> ir.Value:
    a, b = node.inputs[0], node.inputs[1]
    return b if a is value else a


def scalar_is(value: ir.Value | None, expected: float, rel: float = 1e-3) -> bool:
    got = const_scalar(value)
    return got is not None and abs(got - expected) <= rel * abs(expected)


def last_axis_reduction(node: ir.Node) -> bool:
    """ReduceMean over the last axis only, keeping dims (axes as attribute before opset 18, input after)."""
    if attr(node, "keepdims", 1) != 1:
        return False
    axes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attr(node, "axes")
    if axes is None:
        return False
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    if axes == [-1]:
        return True
    dims = static_dims(node.inputs[0])
    return dims is not None and axes == [len(dims) - 1]


def squared(value: ir.Value, of: ir.Value | None = None) -> ir.Value | None:
    """x when value is Pow(x, 2) or Mul(x, x) (and x is `of`, when given)."""
    node = producer(value, "Pow", "Mul")
    if node is None:
        return None
    if node.op_type == "Pow" and scalar_is(node.inputs[1], 2.0, 0.0):
        x = node.inputs[0]
    elif node.op_type == "Mul" and node.inputs[0] is node.inputs[1]:
        x = node.inputs[0]
    else:
        return None
    return x if of is None or x is of else None


def reciprocal_sqrt_of(node: ir.Node, x: ir.Value) -> ir.Value | None:
    """For n = x / sqrt(v) or x * reciprocal(sqrt(v)): return sqrt's input v."""
    if node.op_type == "Div" and node.inputs[0] is x:
        root = producer(node.inputs[1], "Sqrt")
    elif node.op_type == "Mul":
        recip = producer(other_input(node, x), "Reciprocal", "Div")
        if recip is not None and recip.op_type == "Div" and not scalar_is(recip.inputs[0], 1.0, 0.0):
            recip = None  # 1 / sqrt(v) written as a Div
        root = producer(recip.inputs[-1], "Sqrt") if recip is not None else None
    else:
        return None
    return root.inputs[0] if root is not None else None


def epsilon_of(value: ir.Value) -> tuple[ir.Value, float]:
    """For Add(var, eps) return (var, eps)."""
    add = producer(value, "Add")
    if add is None:
        raise Reject("no epsilon is added before the square root")
    for var, eps in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        e = const_scalar(eps)
        if e is not None:
            return var, e
    raise Reject("the value added before the square root is not a constant epsilon")


def one_d_const(value: ir.Value | None, size: int | None) -> bool:
    array = const_array(value)
    return array is not None and array.ndim == 1 and (size is None or array.shape[0] == size)


def affine_tail(value: ir.Value, hidden: int | None) -> tuple[ir.Value, ir.Value | None, ir.Value | None]:
    """Optional Mul by a 1-D weight and Add of a 1-D bias after a normalisation: (output, weight, bias)."""
    weight = bias = None
    user = only_consumer(value)
    if user is not None and user.op_type == "Mul" and one_d_const(other_input(user, value), hidden):
        weight, value = other_input(user, value), user.outputs[0]
        user = only_consumer(value)
    if user is not None and user.op_type == "Add" and one_d_const(other_input(user, value), hidden):
        bias, value = other_input(user, value), user.outputs[0]
    return value, weight, bias
