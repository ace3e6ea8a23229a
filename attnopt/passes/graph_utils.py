"""Small questions asked of an onnx-ir graph (constants, producers, consumers) and node-building helpers."""

from __future__ import annotations

from typing import Sequence

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


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def keep_as_bias(graph: ir.Graph, before: ir.Node, keep: ir.Value, fill: float = float(np.finfo(np.float32).min),
                 name: str = "bias") -> ir.Value:
    """A boolean keep-mask as an additive float bias: 0 where kept, `fill` where masked."""
    zero = add_constant(graph, np.array(0.0, dtype=np.float32), f"{before.name}_{name}_zero")
    value = add_constant(graph, np.array(fill, dtype=np.float32), f"{before.name}_{name}_fill")
    return new_node(graph, before, "Where", [keep, zero, value], name=name).outputs[0]


def key_count_of(graph: ir.Graph, before: ir.Node, past: ir.Value | None, new: ir.Value, axis: int = 2) -> ir.Value:
    """How many keys attention attends over, as a 1-element int64 computed in the graph: new's `axis`,
    plus the past's where there is a cache."""
    count = new_node(graph, before, "Shape", [new], {"start": axis, "end": axis + 1}, name="new_keys").outputs[0]
    if past is None:
        return count
    cached = new_node(graph, before, "Shape", [past], {"start": 2, "end": 3}, name="past_keys").outputs[0]
    return new_node(graph, before, "Add", [cached, count], name="all_keys").outputs[0]


def ensure_opset(model: ir.Model, domain: str, version: int) -> None:
    if model.opset_imports.get(domain, 0) < version:
        model.opset_imports[domain] = version


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


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


def ensure_node_names(graph: ir.Graph) -> None:
    """Names for unnamed nodes (op type and position), so reports and node lists can refer to every node."""
    taken = {n.name for n in graph if n.name}
    for index, node in enumerate(graph):
        if not node.name:
            name, i = f"{node.op_type}_{index}", 0
            while name in taken:
                i += 1
                name = f"{node.op_type}_{index}_{i}"
            node.name = name
            taken.add(name)
