"""LayerNorm: (x - mean) / sqrt(var + eps) * gamma + beta, or a LayerNormalization the model already
has -> attnopt.LayerNormalization(x, gamma[, beta]) {epsilon} over the last axis."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.match import affine_tail, epsilon_of, last_axis_reduction, reciprocal_sqrt_of, squared
from attnopt.passes.fusion.recognition import Recognition
from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import add_constant, attr, consumers, replace_value
from attnopt.passes.shapes import static_dims


def match_decomposed(mean: ir.Node) -> tuple[ir.Value, ir.Value, float, ir.Value | None, ir.Value | None, ir.Value]:
    """From x's ReduceMean: (x, output, epsilon, gamma, beta, normalised value)."""
    if not last_axis_reduction(mean):
        raise Reject("the mean is not taken over the last axis alone")
    x = mean.inputs[0]
    subs = [u for u in consumers(mean.outputs[0]) if u.op_type == "Sub" and u.inputs[1] is mean.outputs[0]]
    if len(subs) != 1 or subs[0].inputs[0] is not x:
        raise Reject("the mean is not subtracted from its own input")
    centered = subs[0].outputs[0]
    users = consumers(centered)
    var_node = next((u for u in users if u.op_type == "ReduceMean"), None)
    sq_users = [u for u in users if squared(u.outputs[0], centered) is not None]
    if var_node is None and sq_users:
        var_node = next((v for v in consumers(sq_users[0].outputs[0]) if v.op_type == "ReduceMean"), None)
    if var_node is None or squared(var_node.inputs[0], centered) is None or not last_axis_reduction(var_node):
        raise Reject("no mean of the squared deviation over the last axis")
    norm = next((u for u in users if u.op_type in ("Div", "Mul") and u not in sq_users), None)
    if norm is None:
        raise Reject("the deviation is never divided by the standard deviation")
    root_in = reciprocal_sqrt_of(norm, centered)
    if root_in is None:
        raise Reject(f"{norm.name} does not divide by a square root")
    var, eps = epsilon_of(root_in)
    if var is not var_node.outputs[0]:
        raise Reject("the square root is not of the variance plus epsilon")
    dims = static_dims(x)
    hidden = dims[-1] if dims else None
    out, gamma, beta = affine_tail(norm.outputs[0], hidden)
    return x, out, eps, gamma, beta, norm.outputs[0]


def _ones(graph: ir.Graph, x: ir.Value, name: str) -> ir.Value:
    dims = static_dims(x)
    if not dims or dims[-1] is None:
        raise Reject("no scale and the hidden size is not static")
    return add_constant(graph, np.ones(dims[-1], dtype=np.float32), name)


def _fuse(ctx: Recognition, site: Site, mean: ir.Node) -> None:
    x, out, eps, gamma, beta, _ = match_decomposed(mean)
    gamma = gamma if gamma is not None else _ones(ctx.graph, x, f"{mean.name}_gamma")
    node = ctx.emit(site, out.producer(), "LayerNormalization", [x, gamma] + ([beta] if beta is not None else []),
                    {"epsilon": float(eps)}, name="layernorm")
    replace_value(out, node.outputs[0])


def _adopt(ctx: Recognition, site: Site, node: ir.Node) -> None:
    dims = static_dims(node.inputs[0])
    if attr(node, "axis", -1) not in (-1, len(dims) - 1 if dims else -1):
        raise Reject("normalises over more than the last axis")
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        raise Reject("its mean or inverse standard deviation output is used")
    ctx.adopt(site, node, "LayerNormalization", {"epsilon": float(attr(node, "epsilon", 1e-5))})


def recognise_layernorm(ctx: Recognition) -> None:
    graph = ctx.graph
    ctx.each("layernorm", [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")],
             lambda site, node: _adopt(ctx, site, node), already_fused=True)
    # a centring mean is a layernorm site; RMSNorm and other reductions are not
    means = [n for n in graph if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")
             and any(u.op_type == "Sub" for u in consumers(n.outputs[0]))]
    ctx.each("layernorm", means, lambda site, mean: _fuse(ctx, site, mean))
