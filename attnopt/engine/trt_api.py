"""The TensorRT Python API calls that differ between the 10.x and 11.x lines, one named function per
choice, so build.py reads the same on both and a TensorRT-10-only call has exactly one place to live.

TensorRT 11 removed weak typing: BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4 and the precision-constraint
flags, the INT8 calibrator, platform_has_fast_fp16/int8. Every 11.x network is strongly typed, and
NetworkDefinitionCreationFlag.STRONGLY_TYPED is kept only for compatibility (deprecated, ignored)."""

from __future__ import annotations

from typing import Any

#: the first TensorRT major line without weak typing
STRONGLY_TYPED_ONLY_FROM = 11


def weak_typing_removed(major: int) -> bool:
    return major >= STRONGLY_TYPED_ONLY_FROM


def network_creation_flags(trt: Any, major: int, strongly_typed: bool) -> int:
    """10.x: strong typing is asked for with a creation flag. 11.x: always on; pass no deprecated flag."""
    if weak_typing_removed(major) or not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def weak_precision_flag(trt: Any, major: int, precision: str) -> Any:
    """TensorRT 10's builder flag letting it pick fp16/int8 kernels in an fp32 network. Callers route
    around it on 11 (engine.precision_route); reaching here on 11 is a bug, said plainly."""
    if weak_typing_removed(major):
        raise RuntimeError(f"TensorRT {major}.x has no builder flag for {precision}: precision_route should have "
                           "sent this build through the graph's own precision")
    return {"fp16": trt.BuilderFlag.FP16, "int8": trt.BuilderFlag.INT8}[precision]
