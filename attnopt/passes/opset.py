"""Opset conversion. Up: onnxscript's version converter, finished where it leaves a node in its old
form (the Reduce ops whose `axes` moved from an attribute to an input at opset 18). Down (for an older
TensorRT parser): onnx's own converter, which onnxscript's does not replace there."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant, attr, default_opset

#: Reduce ops that take `axes` as an input from opset 18 on (ReduceSum moved at 13)
_AXES_INPUT_SINCE_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def _move_reduce_axes_to_inputs(graph: ir.Graph) -> None:
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _AXES_INPUT_SINCE_18 or "axes" not in node.attributes:
            continue
        axes = add_constant(graph, np.array(attr(node, "axes"), dtype=np.int64).reshape(-1), f"{node.name}_axes")
        node.attributes.pop("axes")
        node.resize_inputs(2)
        node.replace_input_with(1, axes)


def convert_opset(model: ir.Model, version: int) -> int:
    """Convert `model` in place to `version`; returns the opset it had."""
    import onnxscript.version_converter as version_converter

    before = default_opset(model)
    if before == version:
        return before
    if version < before:
        _downgrade(model, version)
        return before
    converted = model.clone()  # the converter works in place: a failure part-way must leave `model` whole
    version_converter.convert_version(converted, version)
    if version >= 18:
        _move_reduce_axes_to_inputs(converted.graph)
    model.graph = converted.graph  # the opset imports are the graph's
    return before


def _downgrade(model: ir.Model, version: int) -> None:
    import onnx.version_converter

    if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        raise ValueError("converting a model with external data to an older opset is not supported; "
                         "export it at that opset instead (attnopt export --opset)")
    converted = ir.from_proto(onnx.version_converter.convert_version(ir.to_proto(model), version))
    model.graph = converted.graph  # the opset imports are the graph's
