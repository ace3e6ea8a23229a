"""Checks of Q/DQ placement as TensorRT's explicit quantization wants it: each quantized MatMul/Gemm
reads DequantizeLinear outputs directly (nothing in between), activations go through a Quantize-
Dequantize pair, zero points are 0 (symmetric int8), and weights are quantized per output channel."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import const_array


def _zero_point_ok(dq: ir.Node) -> bool:
    zero = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
    return zero is None or (zero.dtype == np.int8 and not np.any(zero))


def check_placement(model: ir.Model) -> dict[str, Any]:
    """Counts of quantized linear and attention matmuls, and every placement problem found."""
    issues: list[str] = []
    linear = attention = per_channel = 0
    for node in model.graph:
        if node.op_type == "DequantizeLinear":
            source = node.inputs[0]
            if source is not None and source.const_value is None and (
                    source.producer() is None or source.producer().op_type != "QuantizeLinear"):
                issues.append(f"{node.name}: dequantizes {source.name}, which no QuantizeLinear made")
            if not _zero_point_ok(node):
                issues.append(f"{node.name}: zero point is not int8 zero (TensorRT takes symmetric int8 only)")
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        sources = [v.producer() if v is not None else None for v in node.inputs[:2]]
        dequantized = [p is not None and p.op_type == "DequantizeLinear" for p in sources]
        if not any(dequantized):
            continue
        if not all(dequantized):
            issues.append(f"{node.name}: only some inputs come straight from DequantizeLinear")
            continue
        weight = sources[1].inputs[0]
        if weight is not None and weight.const_value is not None:
            linear += 1
            scale = const_array(sources[1].inputs[1])
            per_channel += int(scale is not None and scale.size > 1)
        else:
            attention += 1
    return {"quantized_linear": linear, "quantized_attention_matmuls": attention,
            "per_channel_weights": per_channel, "issues": issues}
