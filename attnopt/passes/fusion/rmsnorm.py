"""RMSNorm: x / sqrt(mean(x²) + eps) * weight (with or without Casts around it), or an RMS norm op the
model already has -> attnopt.RMSNormalization(x, weight) {epsilon} over the last axis."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.fusion.match import (epsilon_of, last_axis_reduction, one_d_const, other_input,
                                         reciprocal_sqrt_of, squared)
from attnopt.passes.fusion.recognition import Recognition
from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import attr, consumers, only_consumer, producer, replace_value
from attnopt.passes.shapes import static_dims


def match_rms(mean: ir.Node) -> tuple[ir.Value, ir.Value, float, ir.Value]:
    """From the ReduceMean of x²: (x, output, epsilon, weight)."""
    x = squared(mean.inputs[0])
    if x is None:
        raise Reject("not a mean of squares")
    if not last_axis_reduction(mean):
        raise Reject("the mean of squares is not over the last axis alone")
    root_users = [u for u in consumers(mean.outputs[0]) if u.op_type == "Add"]
    if len(root_users) != 1:
        raise Reject("no epsilon is added to the mean of squares")
    eps_var, eps = epsilon_of(root_users[0].outputs[0])
    norm = None
    for user in consumers(x):
        if user.op_type in ("Div", "Mul") and reciprocal_sqrt_of(user, x) is root_users[0].outputs[0]:
            norm = user
    if norm is None:
        raise Reject("x is never divided by the root mean square")
    value = norm.outputs[0]
    cast = only_consumer(value)
    if cast is not None and cast.op_type == "Cast":
        value = cast.outputs[0]  # back to the activation dtype before the weight
    scale = only_consumer(value)
    dims = static_dims(x)
    if scale is None or scale.op_type != "Mul" or not one_d_const(other_input(scale, value), dims[-1] if dims else None):
        raise Reject("the normalised value is not multiplied by a 1-D weight")
    source = producer(x, "Cast")
    x_in = source.inputs[0] if source is not None and source.inputs[0].dtype == x.dtype else x
    return x_in, scale.outputs[0], eps, other_input(scale, value)


def _fuse(ctx: Recognition, site: Site, mean: ir.Node) -> None:
    x, out, eps, weight = match_rms(mean)
    node = ctx.emit(site, out.producer(), "RMSNormalization", [x, weight], {"epsilon": float(eps)}, name="rmsnorm")
    replace_value(out, node.outputs[0])


def _adopt(ctx: Recognition, site: Site, node: ir.Node) -> None:
    dims = static_dims(node.inputs[0])
    if attr(node, "axis", -1) not in (-1, len(dims) - 1 if dims else -1):
        raise Reject("normalises over more than the last axis")
    if len(node.inputs) < 2 or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        raise Reject("no scale input, or its statistics outputs are used")
    ctx.adopt(site, node, "RMSNormalization", {"epsilon": float(attr(node, "epsilon", 1e-5))})


def recognise_rmsnorm(ctx: Recognition) -> None:
    graph = ctx.graph
    ctx.each("rmsnorm", [n for n in graph if n.op_type in ("RMSNormalization", "SimplifiedLayerNormalization")
                         and n.domain in ("", "ai.onnx")], lambda site, node: _adopt(ctx, site, node),
             already_fused=True)
    # a mean of squares that is not layernorm's variance (a square of a centred value) is a site
    means = [n for n in graph if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")
             and squared(n.inputs[0]) is not None and producer(squared(n.inputs[0]), "Sub") is None]
    ctx.each("rmsnorm", means, lambda site, mean: _fuse(ctx, site, mean))
