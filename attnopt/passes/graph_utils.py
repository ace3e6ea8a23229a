"""Small questions asked of an onnx-ir graph: constants, producers, consumers, static dims."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx_ir as ir

ATTNOPT_DOMAIN = "attnopt"
MS_DOMAIN = "com.microsoft"


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array when it is an initializer or a Constant's output."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        node = value.producer()
        if node is not None and node.op_type == "Constant" and node.domain == "" and "value" in node.attributes:
            tensor = node.attributes["value"].value
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - external data that cannot be read is just "not constant"
        return None


def const_scalar(value: ir.Value | None) -> float | None:
    array = const_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node that produced `value`, when it is one of `op_types` in the default domain."""
    node = value.producer() if value is not None else None
    if node is None or node.domain not in ("", "ai.onnx") or (op_types and node.op_type not in op_types):
        return None
    return node


def consumers(value: ir.Value) -> list[ir.Node]:
    return list(value.consumers())


def only_consumer(value: ir.Value) -> ir.Node | None:
    found = consumers(value)
    if len(found) != 1 or value.is_graph_output():
        return None
    return found[0]


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


_SAME_SHAPE_AS_FIRST_INPUT = {"RotaryEmbedding", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                              "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu", "FastGelu"}


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
    A wrong guess cannot pass unnoticed: every rewrite that relies on it is verified numerically."""
    lead_src = next((i for i, d in enumerate(src) if d is not None), len(src))
    others = [d for i, d in enumerate(dims) if i != at]
    lead_out = next((i for i, d in enumerate(others) if d is not None), len(others))
    if lead_src != lead_out or any(d is None for d in src[lead_src:]) or any(d is None for d in others[lead_out:]):
        return None
    known_src = int(np.prod(src[lead_src:])) if src[lead_src:] else 1
    known_out = int(np.prod(others[lead_out:])) if others[lead_out:] else 1
    return known_src // known_out if known_out and known_src % known_out == 0 else None


def new_node(graph: ir.Graph, before: ir.Node, op_type: str, inputs: Sequence[ir.Value | None],
             attributes: dict | None = None, domain: str = "", num_outputs: int = 1, name: str = "") -> ir.Node:
    """Insert a node before `before` (keeps the graph sorted) and name it after it."""
    node = ir.node(op_type, list(inputs), attributes or {}, domain=domain, num_outputs=num_outputs,
                   name=_unique_name(graph, f"{before.name or op_type}/{name or op_type}"))
    for i, out in enumerate(node.outputs):
        out.name = f"{node.name}:{i}"
    graph.insert_before(before, node)
    return node


def _unique_name(graph: ir.Graph, name: str) -> str:
    """Deterministic, unique names for the nodes attnopt creates (ONNX requires unique node names)."""
    taken: set[str] | None = graph.meta.get("attnopt.node_names")
    if taken is None:  # first call on this graph (or after a rollback restored it): seed with what is there
        taken = graph.meta["attnopt.node_names"] = {n.name for n in graph if n.name}
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def add_constant(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """Register an initializer with a name unique in the graph."""
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def ensure_opset(model: ir.Model, domain: str, version: int) -> None:
    if model.opset_imports.get(domain, 0) < version:
        model.opset_imports[domain] = version


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def nodes_of(graph: ir.Graph, op_types: Iterable[str], domain: str = "") -> list[ir.Node]:
    wanted = set(op_types)
    return [n for n in graph if n.op_type in wanted and (n.domain or "") in ({domain, "ai.onnx"} if domain == "" else {domain})]


def replace_value(old: ir.Value, new: ir.Value) -> None:
    """Every use of `old`, graph outputs included, now reads `new`, which takes over old's shape
    and type, and its name when it is a graph output (users look outputs up by name)."""
    new.shape, new.type = old.shape, old.type
    was_output = old.is_graph_output()
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        old.name = f"{name}__replaced"
        new.name = name


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
            picked = np.take(np.array([-1 if d is None else d for d in part], dtype=np.int64), index.astype(np.int64))
            return picked if np.all(picked >= 0) else None
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
