"""Which operators may compute in fp16/bf16, and which stay in fp32 and why.

An allowlist, not a blocklist: an operator attnopt has no rule for keeps fp32, so a conversion never
meets a type constraint it does not know (Resize scales, Range, random ops, custom domains)."""

from __future__ import annotations

import onnx_ir as ir

_MS = "com.microsoft"

#: compute in reduced precision as they are: matmuls, elementwise math, data movement
REDUCED = {
    ("", op) for op in (
        "MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "Tanh",
        "Sigmoid", "Erf", "Gelu", "HardSigmoid", "Softplus", "Min", "Max", "Clip", "Where", "Reshape",
        "Transpose", "Concat", "Split", "Slice", "Gather", "GatherND", "GatherElements", "Squeeze",
        "Unsqueeze", "Expand", "Flatten", "Identity", "Tile", "Pad", "Dropout", "IsNaN", "IsInf", "Equal",
        "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Shape", "Size",
    )
} | {(_MS, op) for op in ("FastGelu", "BiasGelu", "Gelu", "BiasAdd", "QuickGelu")}

#: reduced-precision inputs and outputs, statistics or softmax accumulated in fp32 inside the op
ACCUMULATE_FP32 = {
    ("", "LayerNormalization"), ("", "RMSNormalization"), ("", "Attention"), ("", "RotaryEmbedding"),
    ("", "SimplifiedLayerNormalization"),  # ONNX Runtime registers it in the default domain
    (_MS, "SkipLayerNormalization"), (_MS, "SimplifiedLayerNormalization"),
    (_MS, "SkipSimplifiedLayerNormalization"), (_MS, "Attention"), (_MS, "MultiHeadAttention"),
    (_MS, "GroupQueryAttention"), (_MS, "RotaryEmbedding"),
}

#: numerically fragile on their own: reductions, softmax, pow/exp/log, square roots
FRAGILE = {
    ("", op) for op in (
        "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "ReduceMax", "ReduceMin", "Pow", "Exp", "Log",
        "Sqrt", "Reciprocal", "CumSum",
    )
}

#: outputs of norm ops that hold statistics in fp32 (type U) whatever the op computes in
STAT_OUTPUTS = {
    ("", "LayerNormalization"): (1, 2), (_MS, "SkipLayerNormalization"): (1, 2),
    (_MS, "SimplifiedLayerNormalization"): (1,), ("", "SimplifiedLayerNormalization"): (1,),
    (_MS, "SkipSimplifiedLayerNormalization"): (1, 2),
}

#: attributes that force fp32 accumulation in ops of ACCUMULATE_FP32 (1 = FLOAT)
FP32_ATTRIBUTES = {
    ("", "LayerNormalization"): "stash_type",
    ("", "RMSNormalization"): "stash_type",
    ("", "SimplifiedLayerNormalization"): "stash_type",
    ("", "Attention"): "softmax_precision",
}


def _key(node: ir.Node) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def fp32_reason(node: ir.Node, reduced_softmax: bool = False) -> str | None:
    """Why `node` must stay in fp32 by policy, or None when it may compute in reduced precision.

    `reduced_softmax`: TensorRT's softmax accumulates in fp32 by itself, and Casts around it would
    split the MatMul-Softmax-MatMul pattern its attention fusion looks for."""
    key = _key(node)
    if key in REDUCED or key in ACCUMULATE_FP32 or node.op_type == "Cast" and key[0] == "":
        return None
    if reduced_softmax and key == ("", "Softmax"):
        return None
    if key in FRAGILE:
        return f"{node.op_type} is numerically fragile in reduced precision (policy)"
    return f"no reduced-precision rule for {node.domain + '.' if key[0] else ''}{node.op_type}"
