"""Static shape reasoning over an onnx-ir graph: which axes are known, through Reshape/Transpose and
the Shape/Gather arithmetic exporters write, where onnx's own shape inference stops."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import attr, const_array, producer

#: fused ops attnopt writes whose output has the shape of their first input
_SAME_SHAPE_AS_FIRST_INPUT = {"RotaryEmbedding", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                              "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "FastGelu"}


#: a size: a number, a named axis of the graph's inputs, or unknown
Symbol = int | str | None


def named_axes(graph: ir.Graph) -> set[str]:
    """The symbolic axis names the graph's inputs declare (batch, sequence_length, ...)."""
    return {d.value for v in graph.inputs if v.shape is not None for d in v.shape
            if isinstance(d, ir.SymbolicDim) and d.value}


def axis_symbols(value: ir.Value, named: set[str]) -> list | None:
    """value's sizes as numbers, named axes, or for any other axis a token of that axis of that tensor (equal
    only to itself: a Reshape to sizes read off its own input keeps them). A name shape inference made up
    (unk__N) is not trusted: two runs of it may give one name to two sizes."""
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else d.value if d.value in named else ("axis", id(value), i)
            for i, d in enumerate(value.shape)]


def shape_range(shape_node: ir.Node, rank: int) -> tuple[int, int]:
    """The axes [start, end) a Shape node reads of a rank-`rank` tensor, clamped as ONNX clamps them."""
    def clamped(index: int) -> int:
        return max(0, min(rank, index + rank if index < 0 else index))

    return clamped(attr(shape_node, "start", 0)), clamped(attr(shape_node, "end", rank))


def shape_signature(value: ir.Value, named: set[str]) -> tuple[Symbol, ...] | None:
    """value's shape as numbers and named axes, or None where an axis is neither."""
    axes = axis_symbols(value, named)
    return None if axes is None or any(isinstance(a, tuple) for a in axes) else tuple(axes)


def static_dims(value: ir.Value | None, depth: int = 0) -> list[int | None] | None:
    """Per-axis sizes that are known statically (None where dynamic); None when even the rank is unknown.

    Uses the inferred shape first, then reasons through Reshape/Transpose/elementwise producers,
    because exporters often compute reshape targets from Shape ops that shape inference cannot see."""
    if value is None or depth > 12:
        return None
    dims: list[int | None] | None = None
    if value.shape is not None:
        dims = [d if isinstance(d, int) else None for d in value.shape]
    if dims is not None and all(d is not None for d in dims):
        return dims
    node = value.producer()
    derived = None
    if node is not None and node.op_type in _SAME_SHAPE_AS_FIRST_INPUT and value is node.outputs[0]:
        derived = static_dims(node.inputs[0], depth + 1)  # fused ops attnopt writes, in any domain
    elif node is not None and node.domain in ("", "ai.onnx") and node.op_type == "Split":
        derived = _split_dims(node, value, depth)
    elif node is not None and node.domain in ("", "ai.onnx"):
        derived = _derive_dims(node, depth)
    if dims is None:
        return derived
    if derived is not None and len(derived) == len(dims):
        return [a if a is not None else b for a, b in zip(dims, derived)]
    return dims


def _derive_dims(node: ir.Node, depth: int) -> list[int | None] | None:
    op = node.op_type
    if op == "Transpose":
        src = static_dims(node.inputs[0], depth + 1)
        perm = attr(node, "perm")
        if src is None:
            return None
        perm = perm if perm is not None else list(reversed(range(len(src))))
        return [src[p] for p in perm]
    if op == "Reshape":
        return _reshape_dims(node, depth)
    if op == "Constant":
        array = const_array(node.outputs[0])
        return list(array.shape) if array is not None else None
    if op == "Shape":
        src = static_dims(node.inputs[0], depth + 1)
        if src is None:
            return None
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return [len(src[slice(start, end)])]
    if op == "Unsqueeze":
        src = static_dims(node.inputs[0], depth + 1)
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else attr(node, "axes")
        if src is None or axes is None:
            return None
        rank = len(src) + len(list(np.asarray(axes).reshape(-1)))
        out_axes = sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))
        rest = iter(src)
        return [1 if i in out_axes else next(rest) for i in range(rank)]
    if op == "Gather":
        data, indices = static_dims(node.inputs[0], depth + 1), static_dims(node.inputs[1], depth + 1)
        if data is None or indices is None:
            return None
        axis = attr(node, "axis", 0) % len(data)
        return data[:axis] + indices + data[axis + 1:]
    if op == "MatMul":
        a, b = static_dims(node.inputs[0], depth + 1), static_dims(node.inputs[1], depth + 1)
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return None
        batch = a[:-2] if len(a) >= len(b) else b[:-2]
        return batch + [a[-2], b[-1]]
    if op == "Slice":
        return _slice_dims(node, depth)
    if op == "Concat":
        return _concat_dims(node, depth)
    if op in ("Mul", "Div", "Add", "Sub", "Cast", "Neg", "Where", "Softmax", "Sqrt", "Erf", "Tanh", "Relu", "Sigmoid"):
        ranks = [static_dims(v, depth + 1) for v in node.inputs if v is not None]
        ranks = [r for r in ranks if r is not None]
        if not ranks:
            return None
        rank = max(len(r) for r in ranks)
        out: list[int | None] = [None] * rank
        for r in ranks:
            for i, d in enumerate(r, start=rank - len(r)):
                if d is not None and d != 1:
                    out[i] = d
                elif d == 1 and out[i] is None and all(len(x) == rank and x[i] == 1 for x in ranks if len(x) == rank):
                    out[i] = 1
        return out
    return None


def _split_dims(node: ir.Node, value: ir.Value, depth: int) -> list[int | None] | None:
    """One output of a Split: the input's axes, the split one as long as its part (fused QKV projections
    split into Q, K and V, whose head counts the attention recogniser needs)."""
    src = static_dims(node.inputs[0], depth + 1)
    if src is None:
        return None
    axis = attr(node, "axis", 0) % len(src)
    index = next(i for i, out in enumerate(node.outputs) if out is value)
    sizes = static_ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    out = list(src)
    if sizes is not None:
        out[axis] = int(sizes.reshape(-1)[index])
    elif src[axis] is not None and src[axis] % len(node.outputs) == 0:
        out[axis] = src[axis] // len(node.outputs)
    else:
        out[axis] = None
    return out


def _slice_dims(node: ir.Node, depth: int) -> list[int | None] | None:
    """Axes a Slice does not touch keep their size (the head axis through a partial-rotary split)."""
    src = static_dims(node.inputs[0], depth + 1)
    if src is None or len(node.inputs) < 3:
        return None
    starts, ends = static_ints(node.inputs[1]), static_ints(node.inputs[2])
    axes = static_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = static_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if axes is None and starts is not None:
        axes = np.arange(starts.size)
    if axes is None:
        return None
    out = list(src)
    for i, axis in enumerate(int(a) % len(src) for a in axes.reshape(-1)):
        out[axis] = None
        if src[axis] is not None and starts is not None and ends is not None:
            step = int(steps.reshape(-1)[i]) if steps is not None else 1
            bounds = slice(int(starts.reshape(-1)[i]), int(ends.reshape(-1)[i]), step).indices(src[axis])
            out[axis] = len(range(*bounds))
    return out


def _concat_dims(node: ir.Node, depth: int) -> list[int | None] | None:
    parts = [static_dims(v, depth + 1) for v in node.inputs]
    ranks = {len(p) for p in parts if p is not None}
    if len(ranks) != 1:
        return None
    rank = ranks.pop()
    axis = attr(node, "axis", 0) % rank
    out: list[int | None] = [None] * rank
    for i in range(rank):
        known = [p[i] for p in parts if p is not None and p[i] is not None]
        if i == axis:
            out[i] = sum(known) if len(known) == len(parts) else None
        elif known:
            out[i] = known[0]
    return out


def shape_pieces(value: ir.Value) -> list[int | None] | None:
    """Entries of a 1-D shape tensor: constants where known, None where computed at run time."""
    array = const_array(value)
    if array is not None:
        return [int(x) for x in array.reshape(-1)]
    node = producer(value, "Concat")
    if node is None:
        return None
    pieces: list[int | None] = []
    for part in node.inputs:
        arr = const_array(part)
        if arr is not None:
            pieces.extend(int(x) for x in arr.reshape(-1))
            continue
        size = static_dims(part)
        if size is None or len(size) != 1 or size[0] is None:
            return None
        pieces.extend([None] * size[0])
    return pieces


def _reshape_dims(node: ir.Node, depth: int) -> list[int | None] | None:
    pieces = shape_pieces(node.inputs[1])
    if pieces is None:
        return None
    src = static_dims(node.inputs[0], depth + 1)
    allow_zero = attr(node, "allowzero", 0)
    dims: list[int | None] = []
    for i, p in enumerate(pieces):
        if p == 0 and not allow_zero:
            dims.append(src[i] if src is not None and i < len(src) else None)
        elif p is None or p < 0:
            dims.append(None)
        else:
            dims.append(p)
    inferred = node.outputs[0].shape
    if inferred is not None and len(inferred) == len(dims):  # shape inference may know more axes
        dims = [d if d is not None else (i if isinstance(i, int) else None) for d, i in zip(dims, inferred)]
    if pieces.count(-1) == 1 and src is not None and dims[pieces.index(-1)] is None:
        dims[pieces.index(-1)] = _infer_minus_one(src, dims, pieces.index(-1))
    return dims


def _infer_minus_one(src: list[int | None], dims: list[int | None], at: int) -> int | None:
    """Reshape(x, [B, S, -1, 64]) with x (B, S, 128): the -1 is 2 when the run-time pieces lead in
    both shapes and stand for the same axes (as when exporters split heads off the hidden axis).
    A wrong guess cannot pass unnoticed: every rewrite that relies on it is verified numerically.
    Axes of size 1 change no count, so they are left out on both sides ((B, 1, S, 128) from a split)."""
    src = [d for d in src if d != 1]
    others = [d for i, d in enumerate(dims) if i != at and d != 1]
    lead_src = next((i for i, d in enumerate(src) if d is not None), len(src))
    lead_out = next((i for i, d in enumerate(others) if d is not None), len(others))
    if lead_src != lead_out or any(d is None for d in src[lead_src:]) or any(d is None for d in others[lead_out:]):
        return None
    known_src = int(np.prod(src[lead_src:])) if src[lead_src:] else 1
    known_out = int(np.prod(others[lead_out:])) if others[lead_out:] else 1
    return known_src // known_out if known_out and known_src % known_out == 0 else None


def static_ints(value: ir.Value | None, depth: int = 0) -> np.ndarray | None:
    """An integer tensor computed from constants and static dims (Shape, Gather, arithmetic), or None.

    TorchScript exports write `x.shape[-1] // 2` as Shape/Gather/Div nodes rather than a constant."""
    if value is None or depth > 10:
        return None
    array = const_array(value)
    if array is not None:
        return array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape":
        dims = static_dims(node.inputs[0])
        part = dims[slice(attr(node, "start", 0), attr(node, "end", None))] if dims is not None else None
        return np.array(part, dtype=np.int64) if part is not None and None not in part else None
    if op == "Gather" and producer(node.inputs[0], "Shape") is not None:  # one known axis of a partly known shape
        shape_node, index = node.inputs[0].producer(), const_array(node.inputs[1])
        dims = static_dims(shape_node.inputs[0])
        if dims is not None and index is not None:
            part = dims[slice(attr(shape_node, "start", 0), attr(shape_node, "end", None))]
            if np.any(index >= len(part)) or np.any(index < -len(part)):
                return None  # the dims derived for that shape disagree with the graph's own indexing
            picked = np.take(np.array([-1 if d is None else d for d in part], dtype=np.int64), index.astype(np.int64))
            return picked if np.all(picked >= 0) else None
    if op == "Slice" and producer(node.inputs[0], "Shape") is not None:  # a known part of a partly known shape
        return _sliced_shape(node)
    args = [static_ints(v, depth + 1) for v in node.inputs if v is not None]
    if any(a is None for a in args):
        return None
    if op == "Gather":
        return np.take(args[0], args[1], axis=attr(node, "axis", 0))
    if op in ("Unsqueeze", "Squeeze", "Reshape") and args:
        return args[0].reshape(-1) if op != "Squeeze" else args[0].reshape(())
    if op == "Cast":
        return args[0]
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide}
    if op in binary and len(args) == 2:
        return binary[op](args[0], args[1])
    if op == "Concat":
        return np.concatenate([a.reshape(-1) for a in args])
    return None


def _sliced_shape(node: ir.Node) -> np.ndarray | None:
    """Slice(Shape(x), starts, ends) on axis 0 with step 1, when the dims it picks are static."""
    shape_node = node.inputs[0].producer()
    dims = static_dims(shape_node.inputs[0])
    bounds = [const_array(v) if v is not None else None for v in node.inputs[1:5]]
    if dims is None or any(b is None for b in bounds[:2]) or bounds[0].size != 1 or bounds[1].size != 1:
        return None
    if len(bounds) > 2 and bounds[2] is not None and [int(a) for a in bounds[2].reshape(-1)] != [0]:
        return None
    if len(bounds) > 3 and bounds[3] is not None and [int(a) for a in bounds[3].reshape(-1)] != [1]:
        return None
    part = dims[slice(attr(shape_node, "start", 0), attr(shape_node, "end", None))]
    picked = part[int(bounds[0].reshape(())):int(bounds[1].reshape(()))]
    return np.array(picked, dtype=np.int64) if picked and None not in picked else None


_FLOAT_UNARY = {"Sqrt": np.sqrt, "Reciprocal": np.reciprocal}
_FLOAT_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def static_scalar(value: ir.Value | None, depth: int = 0) -> float | None:
    """A scalar computed from constants and static dims, in float32 as the graph computes it, or None.

    TorchScript exports write attention's 1/sqrt(head size) as Sqrt/Div/Cast nodes over Shape."""
    if value is None or depth > 10:
        return None
    ints = static_ints(value)
    array = ints if ints is not None else const_array(value)
    if array is not None:
        return float(array.reshape(())) if array.size == 1 and np.issubdtype(array.dtype, np.number) else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    args = [static_scalar(v, depth + 1) for v in node.inputs if v is not None]
    if not args or any(a is None for a in args):
        return None
    x = np.float32(args[0])
    if op in _FLOAT_UNARY and len(args) == 1:
        return float(_FLOAT_UNARY[op](x)) if x > 0 else None
    if op in _FLOAT_BINARY and len(args) == 2:
        y = np.float32(args[1])
        return None if op == "Div" and y == 0 else float(_FLOAT_BINARY[op](x, y))
    if op == "Cast":
        to = ir.DataType(attr(node, "to", 1))
        return float(int(x)) if to.is_integer() else float(x)
    if op in ("Identity", "Squeeze", "Unsqueeze", "Reshape"):
        return float(x)
    return None
