"""Strongly typed fp16/bf16 conversion: every node computes in one declared type, every change of type
is an explicit Cast, weights are converted once (clamped to the format's range, and reported), and no
Cast that changes nothing or round-trips losslessly is left behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from attnopt.passes.graph_utils import const_array, ensure_node_names
from attnopt.passes.precision.policy import FP32_ATTRIBUTES, STAT_OUTPUTS, _key, fp32_reason

FLOAT = ir.DataType.FLOAT
REDUCED_TYPES = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
#: largest finite magnitudes; bf16 shares fp32's exponent range and never clamps
FINITE_MAX = {ir.DataType.FLOAT16: float(np.finfo(np.float16).max)}
#: smallest positive subnormal: smaller non-zero weights become zero
TINY = {ir.DataType.FLOAT16: float(2.0 ** -24)}


@dataclass
class Conversion:
    """What a conversion did: nodes per compute type, fp32 nodes and why, weights clamped or flushed."""

    precision: str
    reduced: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # node name -> reason
    clamped: list[dict[str, Any]] = field(default_factory=list)
    casts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "nodes": {self.precision: len(self.reduced), "fp32": len(self.kept)},
                "kept": [{"node": k, "reason": v} for k, v in sorted(self.kept.items())],
                "clamped": self.clamped, "casts": self.casts}


def _retype(value: ir.Value, dtype: ir.DataType) -> None:
    # a new type object: a cloned model shares its type objects with the original
    value.type = ir.TensorType(dtype)


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == FLOAT


def _touches_float(node: ir.Node) -> bool:
    return any(_is_float(v) for v in (*node.inputs, *node.outputs))


def _convert_array(array: np.ndarray, dtype: ir.DataType, name: str, clamped: list[dict[str, Any]]) -> ir.Tensor:
    limit, tiny = FINITE_MAX.get(dtype), TINY.get(dtype)
    if limit is not None:
        finite = np.isfinite(array)
        over = finite & (np.abs(array) > limit)
        under = finite & (array != 0) & (np.abs(array) < tiny)
        if over.any() or under.any():
            clamped.append({"tensor": name, "elements": int(array.size), "clamped": int(over.sum()),
                            "flushed_to_zero": int(under.sum()),
                            "max_abs": float(np.abs(array[finite]).max()) if finite.any() else 0.0})
            array = np.where(over, np.sign(array) * limit, array)
    if dtype == ir.DataType.BFLOAT16:
        import ml_dtypes

        return ir.tensor(array.astype(ml_dtypes.bfloat16), name=name)
    return ir.tensor(array.astype(np.float16), name=name)


class _Converter:
    def __init__(self, model: ir.Model, dtype: ir.DataType, report: Conversion):
        self.graph = model.graph
        self.dtype = dtype
        self.report = report
        self.casts: dict[tuple[int, ir.DataType], ir.Value] = {}
        self.constants: dict[int, ir.Value] = {}

    def cast(self, value: ir.Value, to: ir.DataType, before: ir.Node) -> ir.Value:
        """One Cast per (value, type), placed right after the value is made so every consumer can read it."""
        key = (id(value), to)
        if key not in self.casts:
            anchor = value.producer()
            node = ir.node("Cast", [value], {"to": to}, name=f"{value.name}/cast_{to.name.lower()}")
            node.outputs[0].name = f"{value.name}/{to.name.lower()}"
            _retype(node.outputs[0], to)
            node.outputs[0].shape = value.shape
            if anchor is not None and anchor.graph is self.graph:
                self.graph.insert_after(anchor, node)
            else:
                self.graph.insert_before(self.graph.node(0) if len(self.graph) else before, node)
            self.casts[key] = node.outputs[0]
            self.report.casts += 1
        return self.casts[key]

    def constant(self, value: ir.Value, array: np.ndarray) -> ir.Value:
        """A reduced-precision copy of a float constant (shared by every reduced consumer)."""
        if id(value) not in self.constants:
            name = f"{value.name}/{self.report.precision}"
            tensor = _convert_array(array.astype(np.float32), self.dtype, name, self.report.clamped)
            converted = ir.Value(name=name, const_value=tensor, shape=value.shape)
            _retype(converted, self.dtype)
            self.graph.register_initializer(converted)
            self.constants[id(value)] = converted
        return self.constants[id(value)]

    def retype_inputs(self, node: ir.Node, want: ir.DataType) -> None:
        for i, value in enumerate(node.inputs):
            if value is None or value.dtype not in (FLOAT, self.dtype) or value.dtype == want:
                continue
            if want == self.dtype and value.dtype == FLOAT and const_array(value) is not None:
                node.replace_input_with(i, self.constant(value, const_array(value)))
            else:
                node.replace_input_with(i, self.cast(value, want, node))


def fill_types(model: ir.Model) -> None:
    """Element types for every value: onnx's inference where it knows the op, else (contrib ops) the
    type of the node's first float input, which is what attention, norm and GELU ops return."""
    from attnopt.passes.cleanup import infer_shapes

    infer_shapes(model)
    for node in model.graph:
        for out in node.outputs:
            if out.dtype is None and out.index() not in STAT_OUTPUTS.get(_key(node), ()):
                source = next((v for v in node.inputs if v is not None and v.dtype in (FLOAT, *REDUCED_TYPES.values())),
                              None)
                if source is not None:
                    _retype(out, source.dtype)


def convert(model: ir.Model, precision: str = "fp16", keep: dict[str, str] | None = None,
            keep_io_types: bool = True, reduced_softmax: bool = False, reduced_io: Collection[str] = ()) -> Conversion:
    """Convert `model` in place to compute in fp16 or bf16, except the nodes policy or `keep` (node name ->
    reason) hold in fp32. Graph inputs and outputs stay fp32 with `keep_io_types`, except those named in
    `reduced_io` (a decoder's KV cache), which take the reduced type as with it off."""
    dtype = REDUCED_TYPES[precision]
    report = Conversion(precision)
    ensure_node_names(model.graph)
    fill_types(model)
    converter = _Converter(model, dtype, report)
    graph = model.graph
    keep = keep or {}
    for value in graph.inputs:
        if _is_float(value) and (not keep_io_types or value.name in reduced_io):
            _retype(value, dtype)
    for node in list(graph):
        if node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].dtype == dtype \
                and node.outputs[0].dtype == dtype:
            continue  # a Cast this conversion made
        if not _touches_float(node) or node.op_type == "Constant":
            continue  # a constant is converted where a reduced node reads it
        reason = keep.get(node.name) or fp32_reason(node, reduced_softmax)
        if reason is not None:
            report.kept[node.name] = reason
            converter.retype_inputs(node, FLOAT)
            continue
        report.reduced.append(node.name)
        converter.retype_inputs(node, dtype)
        if node.op_type == "Cast" and node.attributes["to"].value == FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", dtype)
        attribute = FP32_ATTRIBUTES.get(_key(node))
        if attribute:
            node.attributes[attribute] = ir.AttrInt64(attribute, int(FLOAT))
        stats = STAT_OUTPUTS.get(_key(node), ())
        for index, out in enumerate(node.outputs):
            if out.dtype == FLOAT and index not in stats:
                _retype(out, dtype)
    _restore_outputs(converter, keep_io_types, reduced_io)
    _drop_redundant_casts(graph)
    graph.sort()
    RemoveUnusedNodesPass()(model)
    return report


def _restore_outputs(converter: _Converter, keep_io_types: bool, reduced_io: Collection[str]) -> None:
    """Graph outputs keep their fp32 type and their names (users look them up by name)."""
    graph = converter.graph
    for i, value in enumerate(list(graph.outputs)):
        if value.dtype != converter.dtype or not keep_io_types or value.name in reduced_io:
            continue
        name = value.name
        node = ir.node("Cast", [value], {"to": FLOAT}, name=f"{name}/cast_output")
        value.name = f"{name}/{converter.report.precision}"
        node.outputs[0].name, node.outputs[0].shape = name, value.shape
        _retype(node.outputs[0], FLOAT)
        graph.append(node)
        graph.outputs[i] = node.outputs[0]
        converter.report.casts += 1


def _drop_redundant_casts(graph: ir.Graph) -> None:
    """Remove Casts to a value's own type, and fold Cast(Cast(x: fp16 -> fp32) -> fp16) into x (exact)."""
    for node in list(graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        source, out = node.inputs[0], node.outputs[0]
        if source is None or out.is_graph_output():
            continue
        inner = source.producer()
        if source.dtype == out.dtype:
            target = source
        elif inner is not None and inner.op_type == "Cast" and inner.inputs[0] is not None \
                and inner.inputs[0].dtype == out.dtype and source.dtype == FLOAT:
            target = inner.inputs[0]  # reduced -> fp32 -> reduced is lossless
        else:
            continue
        out.replace_all_uses_with(target)
        graph.remove(node, safe=True)
    for node in list(graph):  # outer Casts left without readers
        if node.op_type == "Cast" and not node.outputs[0].uses() and not node.outputs[0].is_graph_output():
            graph.remove(node, safe=True)


def nodes_by_precision(model: ir.Model) -> dict[str, int]:
    """How many nodes compute in each type (Casts and Q/DQ not counted), read from the graph."""
    counts: dict[str, int] = {}
    names = {ir.DataType.FLOAT: "fp32", ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16",
             ir.DataType.INT8: "int8", ir.DataType.UINT8: "int8"}
    int8_ops = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QLinearMatMul", "MatMulIntegerToFloat"}
    for node in model.graph:
        if node.op_type in ("Cast", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        if node.op_type in int8_ops or node.op_type in ("MatMul", "Gemm", "Conv") and all(
                (p := v.producer()) is not None and p.op_type == "DequantizeLinear" for v in node.inputs[:2] if v):
            kind = "int8"
        else:
            types = {names.get(v.dtype) for v in node.inputs if v is not None and v.dtype in names}
            kind = next((t for t in ("fp16", "bf16", "fp32") if t in types), None)
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def emulated(model: ir.Model) -> ir.Model:
    """An fp32 copy of a bf16/fp16 model that rounds every reduced value through a Cast pair and holds
    the rounded weights in fp32: the same numbers, runnable where the runtime lacks reduced kernels."""
    copy = model.clone()
    graph = copy.graph
    reduced = set(REDUCED_TYPES.values())
    for value in list(graph.initializers.values()):
        if value.dtype in reduced:
            value.const_value = ir.tensor(value.const_value.numpy().astype(np.float32), name=value.name)
            _retype(value, FLOAT)
    for node in list(graph):
        for out in node.outputs:
            if out.dtype not in reduced:
                continue
            dtype = out.dtype
            uses_output = out.is_graph_output()
            _retype(out, FLOAT)
            if node.op_type == "Cast":
                node.attributes["to"] = ir.AttrInt64("to", FLOAT)
            down = ir.node("Cast", [out], {"to": dtype}, name=f"{out.name}/emulate_round")
            up = ir.node("Cast", [down.outputs[0]], {"to": FLOAT}, name=f"{out.name}/emulate_back")
            _retype(down.outputs[0], dtype)
            _retype(up.outputs[0], FLOAT)
            down.outputs[0].name, up.outputs[0].name = f"{out.name}/rounded", f"{out.name}/emulated"
            out.replace_all_uses_with(up.outputs[0], replace_graph_outputs=uses_output)
            down.replace_input_with(0, out)  # the line above redirected the new Cast too
            if uses_output:  # outputs are looked up by name
                name = out.name
                out.name, up.outputs[0].name = f"{name}/unrounded", name
            graph.insert_after(node, [down, up])
    for value in graph.inputs:
        if value.dtype in reduced:
            _retype(value, FLOAT)
    return copy
