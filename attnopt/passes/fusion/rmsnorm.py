"""RMSNorm: x / sqrt(mean(x²) + eps) * weight (with or without Casts around it) ->
RMSNormalization (ONNX, opset 23) or SimplifiedLayerNormalization (ONNX Runtime); on the ort target
with the residual Add folded in -> SkipSimplifiedLayerNormalization."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.fusion.match import (epsilon_of, last_axis_reduction, one_d_const, other_input,
                                         reciprocal_sqrt_of, squared)
from attnopt.passes.fusion.sites import FusionOutcome, Reject
from attnopt.passes.fusion.skip import fold_residual
from attnopt.passes.graph_utils import consumers, new_node, only_consumer, producer, replace_value
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


def fuse_rmsnorm(model: ir.Model, target: str, opset: int) -> FusionOutcome:
    outcome = FusionOutcome("rmsnorm")
    graph = model.graph
    for node in [n for n in graph if n.op_type in ("RMSNormalization", "SimplifiedLayerNormalization")]:
        outcome.sites += 1
        outcome.fused += 1
        outcome.already_fused += 1
        outcome.forms[node.op_type] = outcome.forms.get(node.op_type, 0) + 1
    for mean in [n for n in graph if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]:
        if squared(mean.inputs[0]) is None or producer(squared(mean.inputs[0]), "Sub") is not None:
            continue  # layernorm's variance, or some other reduction: not an RMSNorm site
        outcome.sites += 1
        try:
            x, out, eps, weight = match_rms(mean)
            op_type = _op_for(target, opset)
        except Reject as why:
            outcome.reject(mean.name, str(why))
            continue
        norm = new_node(graph, out.producer(), op_type, [x, weight], {"axis": -1, "epsilon": float(eps)}, name="rmsnorm")
        replace_value(out, norm.outputs[0])
        form = op_type
        if target == "ort" and fold_residual(model, norm, "SkipSimplifiedLayerNormalization", x, weight, None, eps):
            graph.remove(norm, safe=True)
            form = "SkipSimplifiedLayerNormalization"
        outcome.fused += 1
        outcome.forms[form] = outcome.forms.get(form, 0) + 1
    return outcome


def _op_for(target: str, opset: int) -> str:
    if target == "ort":
        return "SimplifiedLayerNormalization"  # an ONNX Runtime kernel in the default domain
    if opset >= 23:
        return "RMSNormalization"
    raise Reject(f"RMSNormalization needs opset 23 (the model has {opset}); re-export with --opset 23")
