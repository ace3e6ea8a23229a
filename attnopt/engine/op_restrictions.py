"""The per-op restrictions of an operator table that can be checked on the graph without TensorRT:
inputs that must be build-time constants or zero, inputs/outputs/attribute values the parser rejects,
input element types and ranks. Restrictions the table only describes (its `note`) are not checked."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from attnopt.engine.optable import OperatorTable


@dataclass(frozen=True)
class Violation:
    node: str
    message: str
    fix: str


class GraphFacts:
    """What the checks need to know about the graph's values: which are constants (initializers, Constant
    outputs, and anything computed from constants alone, which TensorRT folds), their values where
    readable, and element types and ranks from the graph and ONNX shape inference."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.values: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.constant = set(self.values)
        for node in graph.node:  # topological order: a node's inputs are settled before it
            if node.op_type == "Constant":
                self.constant.update(node.output)
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.values[node.output[0]] = value
            elif node.input and all(not i or i in self.constant for i in node.input):
                self.constant.update(node.output)
        self.types: dict[str, tuple[int, int | None]] = {}  # name -> (elem_type, rank)
        for t in graph.initializer:
            self.types[t.name] = (t.data_type, len(t.dims))
        for value in [*graph.input, *graph.output, *_inferred_value_info(model)]:
            tensor = value.type.tensor_type
            rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
            self.types.setdefault(value.name, (tensor.elem_type, rank))

    def all_zero(self, name: str) -> bool | None:
        """True/False where the value can be read here; None for external data or computed values."""
        tensor = self.values.get(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return not np.any(numpy_helper.to_array(tensor))


def _inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    try:
        return list(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info)
    except Exception:  # noqa: BLE001 - inference is a help here, never a requirement
        return list(model.graph.value_info)


def _input(node: onnx.NodeProto, index: str) -> str:
    i = int(index)
    return node.input[i] if i < len(node.input) else ""


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def node_violations(node: onnx.NodeProto, rules: dict[str, Any], facts: GraphFacts,
                    version: str) -> Iterator[tuple[str, str]]:
    """(message, fix) per broken rule of one node."""
    where = f"for TensorRT {version}'s ONNX parser"
    for index, label in rules.get("constant_inputs", {}).items():
        name = _input(node, index)
        if name and name not in facts.constant:
            yield (f"{node.op_type} input {label} must be a build-time constant {where}, and it is computed at run "
                   f"time", "make it an initializer (polygraphy surgeon sanitize --fold-constants folds what it can)")
    for index, label in rules.get("zero_inputs", {}).items():
        name = _input(node, index)
        if name and facts.all_zero(name) is False:
            yield f"{node.op_type} {label} must be zero {where}", "quantize symmetrically (attnopt quantize does)"
    for index, label in rules.get("unsupported_inputs", {}).items():
        if _input(node, index):
            yield f"{node.op_type} input {label} is not supported {where}", "leave the input out"
    for index, label in rules.get("unsupported_outputs", {}).items():
        i = int(index)
        if i < len(node.output) and node.output[i]:
            yield f"{node.op_type} output {label} is not supported {where}", "drop the output from the node"
    for name, allowed in rules.get("attribute_values", {}).items():
        value = _attribute(node, name)
        if isinstance(value, bytes):
            value = value.decode()
        if value is not None and value not in allowed:
            yield (f"{node.op_type} attribute {name}={value!r} is not supported {where}",
                   f"use {' or '.join(repr(v) for v in allowed)}")
    for index, allowed in rules.get("input_types", {}).items():
        name = _input(node, index)
        elem = facts.types.get(name, (0, None))[0] if name else 0
        if elem and onnx.TensorProto.DataType.Name(elem) not in allowed:
            yield (f"{node.op_type} input {index} is {onnx.TensorProto.DataType.Name(elem)}; {where} it must be "
                   f"{' or '.join(allowed)}", f"cast it to {allowed[0]}")
    for index, rank in rules.get("input_ranks", {}).items():
        name = _input(node, index)
        have = facts.types.get(name, (0, None))[1] if name else None
        if have is not None and have != rank:
            yield f"{node.op_type} input {index} has rank {have}; {where} it must be {rank}D", f"reshape it to {rank}D"


def violations(model: onnx.ModelProto, table: OperatorTable) -> list[Violation]:
    """Every broken restriction of every supported node, in graph order."""
    facts: GraphFacts | None = None
    found = []
    for node in model.graph.node:
        rules = table.restriction(node.op_type) if table.supports(node.op_type, node.domain) else {}
        if not set(rules) - {"note"}:
            continue
        facts = facts or GraphFacts(model)
        for message, fix in node_violations(node, rules, facts, table.version):
            found.append(Violation(node.name or node.op_type, message, fix))
    return found
