"""TensorRT: no contrib ops; attention in the form its fused multi-head attention kernels recognise."""

from __future__ import annotations

import onnx_ir as ir

from attnopt.passes.lower.common import decomposed_attention, replace_output


def lower_attention(model: ir.Model, node: ir.Node) -> str:
    replace_output(node, decomposed_attention(model.graph, node))
    return "decomposed: Q scaled before MatMul(Q, Kᵀ), Softmax, MatMul(P, V)"
