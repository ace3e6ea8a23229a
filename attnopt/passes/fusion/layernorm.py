"""LayerNorm: (x - mean) / sqrt(var + eps) * gamma + beta -> LayerNormalization (ONNX, opset 17+);
on the ort target, with the residual Add folded in -> SkipLayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.match import affine_tail, epsilon_of, last_axis_reduction, reciprocal_sqrt_of, squared
from attnopt.passes.fusion.sites import FusionOutcome, Reject
from attnopt.passes.fusion.skip import fold_residual
from attnopt.passes.graph_utils import add_constant, attr, consumers, new_node, replace_value
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


def fuse_layernorm(model: ir.Model, target: str, opset: int) -> FusionOutcome:
    outcome = FusionOutcome("layernorm")
    graph = model.graph
    if opset < 17:
        for mean in [n for n in graph if n.op_type == "ReduceMean"]:
            outcome.sites += 1
            outcome.reject(mean.name, f"LayerNormalization needs opset 17; the model has {opset}")
        return outcome
    for mean in [n for n in graph if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]:
        if mean.graph is None:
            continue  # removed as part of an earlier match
        if not any(u.op_type == "Sub" for u in consumers(mean.outputs[0])):
            continue  # not a centring mean: RMSNorm or other reductions are not layernorm sites
        outcome.sites += 1
        try:
            x, out, eps, gamma, beta, _ = match_decomposed(mean)
            gamma = gamma if gamma is not None else _ones(graph, x, f"{mean.name}_gamma")
        except Reject as why:
            outcome.reject(mean.name, str(why))
            continue
        inputs = [x, gamma] + ([beta] if beta is not None else [])
        node = new_node(graph, out.producer(), "LayerNormalization", inputs, {"axis": -1, "epsilon": float(eps)},
                        name="layernorm")
        replace_value(out, node.outputs[0])
        outcome.fused += 1
    for node in [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]:
        is_new = node.name.endswith("/layernorm")
        if not is_new:
            outcome.sites += 1
            outcome.fused += 1
            outcome.already_fused += 1
        form = "LayerNormalization"
        if target == "ort" and _fold_skip(model, node):
            form = "SkipLayerNormalization"
        outcome.forms[form] = outcome.forms.get(form, 0) + 1
    return outcome


def _fold_skip(model: ir.Model, node: ir.Node) -> bool:
    dims = static_dims(node.inputs[0])
    axis = attr(node, "axis", -1)
    if dims is None or axis not in (-1, len(dims) - 1) or len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
        return False
    beta = node.inputs[2] if len(node.inputs) > 2 else None
    if fold_residual(model, node, "SkipLayerNormalization", node.inputs[0], node.inputs[1], beta,
                     attr(node, "epsilon", 1e-5)):
        model.graph.remove(node, safe=True)
        return True
    return False
