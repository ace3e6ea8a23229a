"""Logits for the last position only: a generator reads the next token's logits from each row's last token,
so a decoder with a KV cache computes its LM head there alone (each row's last real token picked from the hidden
states, then the head). A prefill of S tokens then runs the head once instead of S times: on SmolLM2-135M (2
threads, 128 tokens, paired interleaved runs) prefill takes 7% less time in fp32 and 18% less with int4 weights,
where the head is the largest MatMul. onnxruntime-genai reads such a graph as it is (a `logits` output whose
sequence axis is the fixed size 1, as its builder writes with `prune_lm_head`).

The row's last real token is the last position its attention mask keeps among the new tokens: the last position
with left padding (attnopt's loop), the last prompt token with right padding (how onnxruntime-genai pads a
batch). The builder's `prune_lm_head` takes the last position whatever the padding.

What needs every position (teacher-forced quality, calibration) restores the full head first
(`restore_all_logits`), which finds the nodes this pass writes by their names and takes them out."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, const_array, new_node

LOGITS = "logits"
#: the nodes this pass writes are named after the head with this in their names (graph_utils.new_node)
_MARK = "last_logits/"
#: ops between the head's MatMul and the logits that act on each position alone (a bias, a scale, soft-capping)
_PER_POSITION = {"Add", "Sub", "Mul", "Div", "Tanh", "Cast", "Identity"}
#: heads whose activation is A as it is (row for row), so picking a row before the head is exact
_HEADS = {"MatMul", "MatMulNBits"}


def _logits(model: ir.Model) -> ir.Value | None:
    return next((v for v in model.graph.outputs if v.name == LOGITS), None)


def lm_head(model: ir.Model) -> tuple[ir.Node | None, str]:
    """The MatMul that makes the logits from the hidden states, walking back from the `logits` output through
    per-position ops; or None and why not."""
    head, _, reason = _head_chain(model)
    return head, reason


def _head_chain(model: ir.Model) -> tuple[ir.Node | None, list[ir.Value], str]:
    """(the head, the values from its output to the logits, why not found)."""
    logits = _logits(model)
    if logits is None:
        return None, [], "the graph has no `logits` output"
    if logits.shape is None or len(logits.shape) != 3:
        return None, [], "the logits are not (batch, sequence, vocabulary)"
    value, chain = logits, [logits]
    while True:
        node = value.producer()
        if node is None:
            return None, [], "the logits are a graph input or constant"
        if node.op_type in _HEADS and node.domain in ("", "ai.onnx", "com.microsoft"):
            return node, chain, ""
        if node.op_type not in _PER_POSITION:
            return None, [], f"the logits come from a {node.op_type}, not from a MatMul through per-position ops"
        # follow the input that carries the positions: the one that is not a constant
        moving = [v for v in node.inputs if v is not None and const_array(v) is None]
        if len(moving) != 1:
            return None, [], f"the logits' {node.op_type} mixes two computed values"
        value = moving[0]
        chain.append(value)


def computes_last_logits(model: ir.Model) -> bool:
    """Whether the LM head reads one position per row: attnopt's form, or the builder's `prune_lm_head`."""
    head, _ = lm_head(model)
    return head is not None and _picking(head) is not None


def _picking(head: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """(the hidden states, the nodes that pick one position of them) before `head`: this pass's (found by the
    names it writes), or onnxruntime-genai's builder's `prune_lm_head` (Gather at index -1 of axis 1, then
    Unsqueeze on axis 1); None when the head reads every position."""
    node = head.inputs[0].producer() if head.inputs[0] is not None else None
    if node is None:
        return None
    if node.op_type == "GatherElements" and _MARK in node.name:
        return node.inputs[0], [n for n in head.graph if _MARK in n.name]
    if node.op_type == "Unsqueeze" and len(node.inputs) > 1 and _ints(node.inputs[1]) == [1]:
        gather = node.inputs[0].producer()
        index = const_array(gather.inputs[1]) if gather is not None and gather.op_type == "Gather" else None
        if index is not None and index.ndim == 0 and int(index) == -1 and attr(gather, "axis", 0) == 1:
            return gather.inputs[0], [node, gather]
    return None


def _ints(value: ir.Value | None) -> list[int] | None:
    array = const_array(value)
    return None if array is None else [int(v) for v in array.reshape(-1)]


def _set_sequence(chain: list[ir.Value], length: Any) -> None:
    """The sequence axis of every value from the head's output to the logits."""
    for value in chain:
        if value.shape is not None and len(value.shape) == 3:
            value.shape = ir.Shape([value.shape[0], length, value.shape[2]])


def keep_last_logits(model: ir.Model) -> str:
    """Rewrite a cached decoder's LM head to read each row's last real token only (in place). Returns "" when
    done, else why it was left (no cache, no mask, no recognisable head, already done)."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    if not any(name.startswith("past_key_values.") for name in inputs):
        return "not a decoder with a KV cache"
    mask = inputs.get("attention_mask")
    if mask is None:
        return "no attention_mask to find each row's last token"
    head, chain, reason = _head_chain(model)
    if head is None:
        return reason
    if _picking(head) is not None:
        return "already computes the last position's logits only"
    hidden = head.inputs[0]
    if hidden is not None and hidden.producer() is not None and hidden.producer().op_type == "DequantizeLinear":
        return "the LM head reads a quantized activation (Q/DQ): a row picked there would split the pair"
    if hidden is None or hidden.shape is None or len(hidden.shape) != 3 or not isinstance(hidden.shape[2], int):
        return "the LM head's input is not (batch, sequence, hidden) with a known hidden size"

    def constant(array: np.ndarray, name: str) -> ir.Value:
        return add_constant(graph, array, f"{head.name}/{_MARK}{name}")

    def node(op: str, inputs: list[ir.Value], attributes: dict | None = None) -> ir.Value:
        return new_node(graph, head, op, inputs, attributes, name=_MARK + op).outputs[0]

    # the new tokens' part of the mask, then the last position it keeps in each row
    length = node("Shape", [hidden], {"start": 1, "end": 2})
    new = node("Slice", [mask, node("Neg", [length]), constant(np.array([2**62], np.int64), "end"),
                         constant(np.array([1], np.int64), "axis")])
    last = node("ArgMax", [new], {"axis": 1, "keepdims": 1, "select_last_index": 1})
    index = node("Expand", [node("Unsqueeze", [last, constant(np.array([2], np.int64), "unsqueeze_axis")]),
                            constant(np.array([1, 1, hidden.shape[2]], np.int64), "index_shape")])
    picked = node("GatherElements", [hidden, index], {"axis": 1})
    picked.dtype, picked.shape = hidden.dtype, ir.Shape([hidden.shape[0], 1, hidden.shape[2]])
    head.replace_input_with(0, picked)
    _set_sequence(chain, 1)
    return ""


def restore_all_logits(model: ir.Model) -> bool:
    """Undo keep_last_logits, or the builder's `prune_lm_head` (in place): the head reads every position again.
    Returns whether there was anything to undo."""
    head, chain, _ = _head_chain(model)
    picking = _picking(head) if head is not None else None
    if picking is None:
        return False
    hidden, nodes = picking
    head.replace_input_with(0, hidden)
    graph = model.graph
    constants = [v for n in nodes for v in n.inputs if v is not None and v.const_value is not None]
    graph.remove(nodes, safe=True)
    for value in constants:
        if not value.uses() and not value.is_graph_input() and value.name in graph.initializers:
            graph.initializers.pop(value.name)
    ids = next((v for v in graph.inputs if v.name == "input_ids"), None)
    _set_sequence(chain, ids.shape[1] if ids is not None and ids.shape is not None and len(ids.shape) > 1 else None)
    return True
