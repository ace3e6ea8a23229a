"""GELU: x * 0.5 * (1 + erf(x / sqrt 2)) and the tanh form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))),
or a Gelu the model already has -> attnopt.Gelu(x) {approximate: none|tanh}. The bias added just before
is found here too (`added_bias`), for targets with a bias-GELU kernel."""

from __future__ import annotations

import math

import onnx_ir as ir

from attnopt.passes.fusion.match import one_d_const, other_input, scalar_is
from attnopt.passes.fusion.recognition import Recognition
from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import attr, const_scalar, only_consumer, producer, replace_value

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_argument(erf: ir.Node) -> ir.Value:
    node = producer(erf.inputs[0], "Div", "Mul")
    if node is None:
        raise Reject("erf's argument is not x / sqrt(2)")
    if node.op_type == "Div" and scalar_is(node.inputs[1], math.sqrt(2.0)):
        return node.inputs[0]
    if node.op_type == "Mul":
        for x, c in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if scalar_is(c, 1.0 / math.sqrt(2.0)):
                return x
    raise Reject("erf's argument is not x / sqrt(2)")


def _cube_of(value: ir.Value) -> ir.Value | None:
    node = producer(value, "Pow", "Mul")
    if node is None:
        return None
    if node.op_type == "Pow":
        return node.inputs[0] if scalar_is(node.inputs[1], 3.0, 0.0) else None
    for x, sq in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        inner = producer(sq, "Mul")
        if inner is not None and inner.inputs[0] is x and inner.inputs[1] is x:
            return x
    return None


def _tanh_argument(tanh: ir.Node) -> ir.Value:
    scale = producer(tanh.inputs[0], "Mul")
    if scale is None:
        raise Reject("tanh's argument is not sqrt(2/pi) * (x + 0.044715 x³)")
    inner = next((v for v in scale.inputs if not scalar_is(v, _SQRT_2_OVER_PI)), None)
    if inner is None or not any(scalar_is(v, _SQRT_2_OVER_PI) for v in scale.inputs):
        raise Reject("tanh's argument is not scaled by sqrt(2/pi)")
    add = producer(inner, "Add")
    if add is None:
        raise Reject("tanh's argument is not x + 0.044715 x³")
    for x, term in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        mul = producer(term, "Mul")
        if mul is None:
            continue
        for cube, c in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            if scalar_is(c, 0.044715) and _cube_of(cube) is x:
                return x
    raise Reject("tanh's argument is not x + 0.044715 x³")


def is_tanh_gelu_site(tanh: ir.Node) -> bool:
    """A Tanh is a GELU site when its argument has the cubic term (a plain tanh activation is not)."""
    node = producer(tanh.inputs[0], "Mul")
    return node is not None and any(producer(v, "Add") is not None for v in node.inputs)


def _product_with_half_x(start: ir.Value, x: ir.Value) -> ir.Value:
    """Follow (1 + erf/tanh) through the Muls that multiply it by x and 0.5, in any association."""
    value, have_x, factor = start, False, 1.0
    for _ in range(3):
        mul = only_consumer(value)
        if mul is None or mul.op_type != "Mul":
            break
        other = other_input(mul, value)
        c = const_scalar(other)
        if other is x:
            have_x = True
        elif c is not None:
            factor *= c
        else:
            inner = producer(other, "Mul")
            if inner is None:
                break
            a, b = inner.inputs
            cx = const_scalar(b) if a is x else const_scalar(a) if b is x else None
            if cx is None:
                break
            have_x, factor = True, factor * cx
        value = mul.outputs[0]
        if have_x and abs(factor - 0.5) < 1e-6:
            return value
    raise Reject("(1 + erf(...)) is not multiplied by exactly 0.5 * x")


def match_gelu(node: ir.Node) -> tuple[ir.Value, ir.Value, str]:
    """From the Erf or Tanh: (x, output, approximate)."""
    x = _erf_argument(node) if node.op_type == "Erf" else _tanh_argument(node)
    one = only_consumer(node.outputs[0])
    if one is None or one.op_type != "Add" or not scalar_is(other_input(one, node.outputs[0]), 1.0):
        raise Reject(f"{node.op_type}'s result is not added to 1")
    out = _product_with_half_x(one.outputs[0], x)
    return x, out, "none" if node.op_type == "Erf" else "tanh"


def added_bias(x: ir.Value) -> tuple[ir.Value, ir.Value] | None:
    """x = Add(h, b) with a 1-D constant b and x read by nothing else: (h, b), the form ONNX Runtime's
    BiasGelu takes in one kernel. Ask it on a graph without dead nodes, so that uses are real."""
    add = producer(x, "Add")
    if add is None or x.is_graph_output() or len(list(x.uses())) != 1:
        return None
    for h, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if one_d_const(b, None) and not one_d_const(h, None):
            return h, b
    return None


def _fuse(ctx: Recognition, site: Site, node: ir.Node) -> None:
    x, out, approximate = match_gelu(node)
    gelu = ctx.emit(site, out.producer(), "Gelu", [x], {"approximate": approximate}, name="gelu")
    replace_value(out, gelu.outputs[0])


def recognise_gelu(ctx: Recognition) -> None:
    graph = ctx.graph
    std = [n for n in graph if n.domain in ("", "ai.onnx")]
    ctx.each("gelu", [n for n in std if n.op_type == "Gelu"],
             lambda site, node: ctx.adopt(site, node, "Gelu", {"approximate": attr(node, "approximate", "none")}),
             already_fused=True)
    anchors = [n for n in std if n.op_type == "Erf" or (n.op_type == "Tanh" and is_tanh_gelu_site(n))]
    ctx.each("gelu", anchors, lambda site, node: _fuse(ctx, site, node))
