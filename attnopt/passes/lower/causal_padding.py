"""A decoder's attention mask shown to be the causal mask and the key padding of its attention_mask input,
and nothing else. A kernel that masks causally itself then needs only the padding as its bias, a few ops
on the attention_mask, in place of the dozens the exporter wrote to build the full (B, 1, S, keys) mask
at every step. The model's own mask ops run alone on made-up masks and lengths (a chunk on a past, a
decode step at the end of the context, where a sliding window or chunked attention shows) and must give
exactly causal AND padding, whatever form the exporter wrote."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, new_node
from attnopt.passes.lower.common import MASK_FLOOR, shared
from attnopt.passes.lower.own_nodes import run_alone
from attnopt.passes.shapes import shape_range

#: (batch, new tokens, past, extra mask columns) per probe, the context length's added: a past longer than any
#: window. The last one's mask runs past the keys: the model reads its first past + new columns
_PROBES = ((3, 5, 3, 0), (4, 4, 0, 0), (3, 1, 7, 0), (2, 2, 4, 3))


def _sizes(batch: int, seq: int, past: int) -> dict[str, int]:
    """The decoder export's named axes (attnopt.models.decoder) at one probe."""
    return {"batch": batch, "sequence_length": seq, "past_sequence_length": past,
            "total_sequence_length": past + seq}


def _known_shape(value: ir.Value) -> bool:
    """Every axis of value is a number or one of the export's named axes, so a probe can size it."""
    if value.shape is None:
        return False
    return all(isinstance(d, int) or getattr(d, "value", None) in _sizes(1, 1, 0) for d in value.shape)


def _shape_at(value: ir.Value, sizes: dict[str, int]) -> list[int]:
    return [d if isinstance(d, int) else sizes[d.value] for d in value.shape]


def _shape_read(node: ir.Node, sizes: dict[str, int]) -> np.ndarray:
    """What a Shape or Size node of a value of known shape returns at a probe's sizes."""
    dims = _shape_at(node.inputs[0], sizes)
    if node.op_type == "Size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    start, end = shape_range(node, len(dims))
    return np.array(dims[start:end], dtype=np.int64)


#: ops whose output's shape follows from their inputs' shapes alone: a Shape read after them needs those
#: inputs' shapes, not their values (TorchScript reads the batch size off the embedded tokens)
_SHAPE_FROM_SHAPES = {"Gather", "Cast", "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Abs",
                      "Where", "Equal", "Not", "And", "Or", "Less", "Greater", "MatMul", "Tanh", "Erf", "Sigmoid",
                      "Relu", "Softmax", "LayerNormalization", "Transpose", "Concat"}
#: ops whose output's shape follows from their first input's shape and their other inputs' values
_SHAPE_FROM_FIRST = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Slice", "Flatten"}


@dataclass
class _Sources:
    """What computes a mask: its nodes; Shape/Size reads among them of values the probes size (fed, not
    run); values it needs only for their shapes (fed zeros); the graph inputs it reads by value."""
    nodes: dict[int, ir.Node] = field(default_factory=dict)
    reads: dict[int, ir.Node] = field(default_factory=dict)
    shaped: dict[int, ir.Value] = field(default_factory=dict)
    inputs: dict[int, ir.Value] = field(default_factory=dict)


def _mask_sources(mask: ir.Value) -> _Sources | None:
    """None where a node is not a plain ONNX op or a value needed for its shape cannot be sized."""
    found, seen = _Sources(), set()
    stack = [(mask, False)]  # (value, needed for its shape only)
    while stack:
        value, shape_only = stack.pop()
        if value.const_value is not None:
            continue
        if shape_only and _known_shape(value) and value.dtype is not None:
            found.shaped[id(value)] = value
            continue
        node = value.producer()
        if node is None:
            if shape_only:
                return None
            found.inputs[id(value)] = value
            continue
        if (id(node), shape_only) in seen or (id(node), False) in seen:
            continue
        seen.add((id(node), shape_only))
        if node.domain not in ("", "ai.onnx") or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                                     for a in node.attributes.values()):
            return None
        if node.op_type in ("Shape", "Size") and _known_shape(node.inputs[0]):
            found.reads[id(node)] = node
            continue
        found.nodes[id(node)] = node
        for i, v in enumerate(node.inputs):
            if v is not None:
                stack.append((v, node.op_type in ("Shape", "Size") or (shape_only and (
                    node.op_type in _SHAPE_FROM_SHAPES or (i == 0 and node.op_type in _SHAPE_FROM_FIRST)))))
    # a value some walk needed by value is computed, not fed
    found.shaped = {k: v for k, v in found.shaped.items()
                    if k not in found.inputs and (v.producer() is None or id(v.producer()) not in found.nodes)}
    return found


def _probe_mask(batch: int, keys: int, rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    """Row 0 all real tokens, row 1 left padded, row 2 a gap in the middle, row 3 right padded, later rows
    random holes."""
    keep = rng.random((batch, keys)) < 0.7
    at = np.arange(keys)
    patterns = [at >= 0, at >= keys // 3, (at < keys // 3) | (at >= 2 * keys // 3), at < keys - keys // 3]
    for row, pattern in zip(range(batch), patterns):
        keep[row] = pattern
    return keep.astype(dtype)


def _is_causal_padding(got: np.ndarray, keep_keys: np.ndarray, seq: int, past: int) -> bool:
    """got (broadcastable to (B, 1, S, keys)) is causal AND key padding: a bool keep-mask exactly, or a
    float bias 0 where kept and at most MASK_FLOOR where masked (what float_bias floors to MASK_FLOOR)."""
    batch, keys = keep_keys.shape
    causal = np.arange(keys)[None, :] <= past + np.arange(seq)[:, None]
    want = causal[None, None] & (keep_keys[:, None, None, :] != 0)
    try:
        got = np.broadcast_to(got, want.shape)
    except ValueError:
        return False
    if got.dtype == np.bool_:
        return bool(np.array_equal(got, want))
    return bool(np.all(got[want] == 0) and np.all(got[~want] <= MASK_FLOOR))


def _proved_padding(model: ir.Model, mask: ir.Value, positions: int | None) -> ir.Value | None:
    found = _mask_sources(mask)
    if found is None or not positions or positions < 8:
        return None
    reads, shaped, inputs = list(found.reads.values()), list(found.shaped.values()), list(found.inputs.values())
    if len(inputs) != 1 or not _known_shape(inputs[0]) or len(inputs[0].shape) != 2:
        return None
    (padding,) = inputs
    dtype = padding.dtype.numpy() if padding.dtype is not None else None
    if dtype is None or not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        return None
    probes = _PROBES + ((1, 1, positions - 1, 0), (3, 3, positions - 3, 0))
    rng = np.random.default_rng(0)
    feeds, masks = [], []
    try:
        for batch, seq, past, extra in probes:
            sizes = _sizes(batch, seq, past)
            if _shape_at(padding, sizes) != [batch, past + seq]:
                return None  # not a (batch, keys) mask
            masks.append(_probe_mask(batch, past + seq + extra, rng, dtype))
            sizes["total_sequence_length"] += extra  # the mask's own length, wherever it is read
            # ones where only a shape counts: a valid token id, and no integer division by zero
            feeds.append([masks[-1], *(_shape_read(r, sizes) for r in reads),
                          *(np.ones(_shape_at(v, sizes), v.dtype.numpy()) for v in shaped)])
        results = run_alone(model, list(found.nodes.values()), [padding, *(r.outputs[0] for r in reads), *shaped],
                            [mask], feeds)
    except Exception:  # noqa: BLE001 - ops these made-up inputs cannot run: keep the model's own mask
        return None
    proved = all(_is_causal_padding(got, keep[:, :past + seq], seq, past)
                 for (got,), keep, (_, seq, past, _) in zip(results, masks, probes))
    return padding if proved else None


def padding_input(model: ir.Model, mask: ir.Value, positions: int | None) -> ir.Value | None:
    """The (batch, keys) graph input whose padding, with causality, is all `mask` applies, once per mask;
    None where that is not shown (a window, chunked attention, another input read, the context length
    unknown so a window could hide beyond the probes)."""
    return shared(model.graph, ("causal padding", id(mask)), lambda: _proved_padding(model, mask, positions))


def padding_bias(graph: ir.Graph, before: ir.Node, padding: ir.Value, queries_of: ir.Value, keys: ir.Value
                 ) -> ir.Value:
    """The key padding as a (B, 1, S, keys) additive bias, 0 / MASK_FLOOR: the mask's first `keys` (a
    1-element count: past + new) columns, as the model reads a longer one; S read off `queries_of`
    ((B, S, ..)), as many rows as the kernels want (they do not broadcast the query axis)."""
    def build() -> ir.Value:
        start = add_constant(graph, np.array([0], dtype=np.int64), f"{before.name}_padding_start")
        axis = add_constant(graph, np.array([1], dtype=np.int64), f"{before.name}_padding_axis")
        columns = new_node(graph, before, "Slice", [padding, start, keys, axis], name="key_columns").outputs[0]
        keep = new_node(graph, before, "Cast", [columns], {"to": ir.DataType.BOOL}, name="key_keep").outputs[0]
        zero = add_constant(graph, np.array(0.0, dtype=np.float32), f"{before.name}_padding_zero")
        floor = add_constant(graph, np.array(MASK_FLOOR, dtype=np.float32), f"{before.name}_padding_floor")
        bias = new_node(graph, before, "Where", [keep, zero, floor], name="key_padding").outputs[0]
        axes = add_constant(graph, np.array([1, 2], dtype=np.int64), f"{before.name}_padding_axes")
        bias = new_node(graph, before, "Unsqueeze", [bias, axes], name="key_padding_4d").outputs[0]
        rows = new_node(graph, before, "Shape", [queries_of], {"start": 1, "end": 2}, name="new_tokens").outputs[0]
        one = add_constant(graph, np.array([1], dtype=np.int64), f"{before.name}_padding_one")
        target = new_node(graph, before, "Concat", [one, one, rows, one], {"axis": 0}, name="padding_rows").outputs[0]
        return new_node(graph, before, "Expand", [bias, target], name="padding_bias").outputs[0]

    # every layer has as many new tokens: the first layer's read serves all
    return shared(graph, ("padding bias", id(padding)), build)
