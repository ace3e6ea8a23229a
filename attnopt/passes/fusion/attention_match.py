"""Attention, found from its math: from each Softmax, up through masks, scalar scales and a logit
soft-cap (c * tanh(scores / c), Gemma 2's) to MatMul(Q, Kᵀ), and down through the NaN guard to MatMul(P, V). Nothing is rewritten here; a site that
is not provably attention raises Reject with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from attnopt.passes.fusion.sites import Reject
from attnopt.passes.graph_utils import attr, const_array, consumers, only_consumer, producer
from attnopt.passes.shapes import static_dims, static_scalar

MASK_FILL_MAX = -1e4
_SCORE_WALK_LIMIT = 8


@dataclass
class AttentionMatch:
    softmax: ir.Node
    q: ir.Value
    k_t: ir.Value  # Kᵀ as the graph has it (scale stripped)
    v: ir.Value
    out: ir.Value  # the output of MatMul(P, V)
    scale: float
    #: (mask, factor it is scaled by, whether it is in the merged (batch*heads, q, k) form)
    float_masks: list[tuple[ir.Value, float, bool]] = field(default_factory=list)
    #: (condition, True = keep where true, the fill written where masked)
    keep_masks: list[tuple[ir.Value, bool, float]] = field(default_factory=list)
    guard: bool = False
    #: models that compute attention on (batch*heads, seq, size) tensors (DeBERTa) view the scores as
    #: (batch, heads, q, k) for the mask and softmax: this is that Reshape
    heads_view: ir.Node | None = None
    #: the part of the scale applied to Q itself (TensorRT's fused attention wants all of it there)
    q_scale: float = 1.0
    #: Shape ops reading the probabilities' shape (TorchScript computes reshape targets that way)
    shape_readers: list[ir.Node] = field(default_factory=list)
    #: c of a soft-cap c * tanh(scores / c) applied to the scaled scores before the masks (0: none)
    softcap: float = 0.0


def _strip_scalar(value: ir.Value) -> tuple[ir.Value, float]:
    """Peel Mul/Div by scalars off a value (constants, or computed from static dims): returns the inner
    value and the factor."""
    factor = 1.0
    for _ in range(4):
        node = producer(value, "Mul", "Div")
        if node is None:
            break
        a, b = node.inputs
        if node.op_type == "Mul":
            ca, cb = static_scalar(a), static_scalar(b)
            if cb is not None:
                value, factor = a, factor * cb
            elif ca is not None:
                value, factor = b, factor * ca
            else:
                break
        else:
            cb = static_scalar(b)
            if cb is None or cb == 0:
                break
            value, factor = a, factor / cb
    return value, factor


def _leads_to_scores(value: ir.Value, depth: int = 0) -> bool:
    """True when walking up through masks and scales reaches a MatMul (the QKᵀ product)."""
    node = producer(value)
    if node is None or depth > _SCORE_WALK_LIMIT:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type in ("Add", "Mul", "Div", "Where", "Reshape", "Tanh") or _same_type_cast(node):
        return any(_leads_to_scores(v, depth + 1) for v in node.inputs if v is not None and const_array(v) is None)
    return False


def _same_type_cast(node: ir.Node | None, dtype: ir.DataType | None = None) -> bool:
    """A Cast that changes nothing: to the type it reads (or to float32 where an exporter left the type
    unknown, as fp32 TorchScript exports do), like the float32 softmax of eager attention in fp32."""
    if node is None or node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return False
    known = node.inputs[0].dtype or dtype
    return attr(node, "to", None) == int(known if known is not None else ir.DataType.FLOAT)


def _scaled_once(value: ir.Value) -> tuple[ir.Value, float] | None:
    """value = x * f or x / (1/f) for one scalar f, as one node: (x, f)."""
    node = producer(value, "Mul", "Div")
    if node is None:
        return None
    a, b = node.inputs
    if node.op_type == "Div":
        divisor = static_scalar(b)
        return (a, 1.0 / divisor) if divisor else None
    for x, f in ((a, static_scalar(b)), (b, static_scalar(a))):
        if f is not None:
            return x, f
    return None


def _softcap(value: ir.Value) -> tuple[ir.Value, float] | None:
    """value = c * tanh(x / c) for one constant c > 0: (x, c)."""
    outer = _scaled_once(value)
    tanh = producer(outer[0], "Tanh") if outer is not None else None
    inner = _scaled_once(tanh.inputs[0]) if tanh is not None else None
    if outer is None or inner is None or outer[1] <= 0 or not np.isclose(inner[1] * outer[1], 1.0, rtol=1e-6):
        return None
    return inner[0], outer[1]


def _is_fill(value: ir.Value) -> bool:
    array = const_array(value)
    return array is not None and array.size >= 1 and bool(np.all(array <= MASK_FILL_MAX))


def _walk_scores(scores: ir.Value, match: AttentionMatch) -> ir.Value:
    """From the Softmax input up to MatMul(Q, Kᵀ), collecting masks and scales. Returns the MatMul output."""
    factor = 1.0  # product of the scales met so far: masks below them are scaled by it too
    value = scores
    for _ in range(_SCORE_WALK_LIMIT):
        node = producer(value)
        if node is None:
            raise Reject("the scores come from a graph input or initializer, not MatMul(Q, Kᵀ)")
        op = node.op_type
        if op == "MatMul":
            match.scale *= factor
            return value
        capped = _softcap(value) if op in ("Mul", "Div") else None
        if capped is not None:
            if match.softcap or factor != 1.0:
                raise Reject(f"the soft-capped scores are capped or scaled again ({node.name})")
            value, match.softcap = capped
        elif _same_type_cast(node):
            value = node.inputs[0]
        elif op in ("Mul", "Div"):
            inner, f = _strip_scalar(value)
            if inner is value:
                raise Reject(f"the scores are multiplied by a non-constant ({node.name})")
            if f <= 0:
                raise Reject(f"scale {f:g} is not positive ({node.name})")
            factor *= f
            value = inner
        elif op == "Add":
            a, b = node.inputs
            if _leads_to_scores(a) and not _leads_to_scores(b):
                value, mask = a, b
            elif _leads_to_scores(b) and not _leads_to_scores(a):
                value, mask = b, a
            else:
                raise Reject(f"cannot tell the scores from the bias in {node.name}")
            if match.softcap:
                raise Reject(f"a mask is added inside the soft-cap's tanh ({node.name})")
            match.float_masks.append((mask, factor, match.heads_view is not None))
        elif op == "Where":
            if match.softcap:
                raise Reject(f"a mask is applied inside the soft-cap's tanh ({node.name})")
            cond, a, b = node.inputs
            if _is_fill(b) and _leads_to_scores(a):
                match.keep_masks.append((cond, True, float(const_array(b).max())))
                value = a
            elif _is_fill(a) and _leads_to_scores(b):
                match.keep_masks.append((cond, False, float(const_array(a).max())))
                value = b
            else:
                raise Reject(f"{node.name} selects between scores and something that is not a mask fill")
        elif op == "Reshape" and match.heads_view is None:
            out_dims, in_dims = static_dims(value), static_dims(node.inputs[0])
            if out_dims is None or in_dims is None or len(out_dims) != 4 or len(in_dims) != 3 or not out_dims[1]:
                raise Reject(f"{node.name} reshapes the scores other than (batch*heads, q, k) -> (batch, heads, q, k)")
            match.heads_view = node
            value = node.inputs[0]
        else:
            raise Reject(f"the scores pass through {op} ({node.name}), which is not a mask or a scale")
    raise Reject("too many operations between Softmax and MatMul(Q, Kᵀ)")


def _find_pv(softmax: ir.Node, shape_readers: list[ir.Node]) -> tuple[ir.Node, bool, bool]:
    """From the Softmax output down to MatMul(P, V), through the IsNaN/Where guard and a Reshape back
    to (batch*heads, q, k). Returns that MatMul, whether a guard was passed, and whether a Reshape was."""
    probs = softmax.outputs[0]
    shape_readers.extend(u for u in consumers(probs) if u.op_type == "Shape")
    users = [u for u in consumers(probs) if u.op_type != "Shape"]
    guard = False
    isnan = [u for u in users if u.op_type == "IsNaN"]
    if isnan and len(users) == 2:
        where = [u for u in users if u.op_type == "Where"]
        if len(where) == 1 and where[0].inputs[0] is isnan[0].outputs[0] and where[0].inputs[2] is probs:
            fill = const_array(where[0].inputs[1])
            if fill is None or np.any(fill != 0):
                raise Reject("the NaN guard after Softmax fills with a non-zero value")
            probs, guard = where[0].outputs[0], True
    if guard:
        users = consumers(probs)
    while len(users) == 1 and _same_type_cast(users[0], softmax.outputs[0].dtype or softmax.inputs[0].dtype) \
            and not probs.is_graph_output():
        probs = users[0].outputs[0]  # eager attention's float32 softmax cast back to an fp32 model's type
        users = consumers(probs)
    user = users[0] if len(users) == 1 and not probs.is_graph_output() else None
    merged = False
    if user is not None and user.op_type == "Reshape" \
            and len(static_dims(user.outputs[0]) or []) == 3:
        probs, user, merged = user.outputs[0], only_consumer(user.outputs[0]), True
    if user is None:
        names = ", ".join(sorted(u.op_type for u in consumers(probs))) or "a graph output"
        raise Reject(f"the attention probabilities are used more than once ({names}), e.g. returned as an output")
    if user.op_type != "MatMul" or user.inputs[0] is not probs:
        raise Reject(f"the attention probabilities feed {user.op_type} ({user.name}), not MatMul(P, V)")
    return user, guard, merged


def match_attention(softmax: ir.Node, opset: int) -> AttentionMatch:
    if opset < 13:
        raise Reject("Softmax before opset 13 normalises over flattened axes")
    rank_dims = static_dims(softmax.inputs[0])
    axis = attr(softmax, "axis", -1)
    if rank_dims is not None and axis not in (-1, len(rank_dims) - 1):
        raise Reject(f"Softmax over axis {axis}, not the key axis (last)")
    if rank_dims is None and axis != -1:
        raise Reject(f"Softmax over axis {axis} of a tensor of unknown rank")
    readers: list[ir.Node] = []
    pv, guard, merged = _find_pv(softmax, readers)
    match = AttentionMatch(softmax, None, None, pv.inputs[1], pv.outputs[0], 1.0, guard=guard,  # type: ignore[arg-type]
                           shape_readers=readers)
    qk = _walk_scores(softmax.inputs[0], match).producer()
    if merged != (match.heads_view is not None):
        raise Reject("the scores and the probabilities are not viewed alike around Softmax")
    q, fq = _strip_scalar(qk.inputs[0])
    k_t, fk = _strip_scalar(qk.inputs[1])
    match.q, match.k_t, match.scale, match.q_scale = q, k_t, match.scale * fq * fk, fq
    rank = 3 if merged else 4
    for name, value in (("Q", q), ("Kᵀ", k_t), ("V", match.v)):
        dims = static_dims(value)
        if dims is None:
            raise Reject(f"the rank of {name} is unknown")
        if len(dims) != rank:
            raise Reject(f"{name} has rank {len(dims)}; heads must be split into (batch, heads, seq, size)")
    return match
