"""A model's own nodes run alone on made-up inputs: how a lowering shows what a piece of the graph computes
(rotary tables by position, a mask that is causal and key padding) before it replaces that piece."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_ir as ir


def run_alone(model: ir.Model, nodes: Sequence[ir.Node], inputs: Sequence[ir.Value], targets: Sequence[ir.Value],
              feeds: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """`targets` computed by `nodes` (in graph order) from `inputs`, once per entry of `feeds` (one array
    per input), on ONNX Runtime's CPU provider without its graph optimisations. `inputs` may be values some
    node produces: that node's output is then fed instead (a Shape whose answer the caller knows)."""
    import onnx

    from attnopt.runtime.onnxruntime import ort_module, session_options

    chosen = {id(n) for n in nodes}
    ordered = [n for n in model.graph if id(n) in chosen]
    constants = {v.name: v.const_value for n in ordered for v in n.inputs
                 if v is not None and v.const_value is not None}
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in ordered], "alone",
        [onnx.helper.make_tensor_value_info(v.name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), None)
         for v, a in zip(inputs, feeds[0])],
        [onnx.ValueInfoProto(name=t.name) for t in targets],  # types as ONNX Runtime infers them
        [ir.serde.serialize_tensor(tensor) for tensor in constants.values()])
    for initializer, name in zip(graph.initializer, constants):
        initializer.name = name
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items() if d in ("", "ai.onnx")]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    session = ort_module().InferenceSession(proto.SerializeToString(), session_options(optimize=False),
                                            providers=["CPUExecutionProvider"])
    return [session.run(None, {v.name: a for v, a in zip(inputs, arrays)}) for arrays in feeds]
