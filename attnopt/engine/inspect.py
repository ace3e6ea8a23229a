"""`attnopt inspect`: an engine's layers and kernels through TensorRT's engine inspector, and per
attention block whether TensorRT fused it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnopt.engine.environment import require_cuda_gpu, require_tensorrt
from attnopt.engine.sidecar import check_compatible, read_engine_sidecar

#: substrings of layer names or kernel tactics that TensorRT uses for fused multi-head attention
_FUSED_MARKERS = ("mha", "fmha", "attention", "flash")


def load_engine(path: Path) -> Any:
    if not path.is_file():
        from attnopt.errors import AttnoptError

        raise AttnoptError(f"{path}: no such file", "build one with attnopt build")
    trt = require_tensorrt()
    gpu = require_cuda_gpu()
    check_compatible(read_engine_sidecar(path), str(trt.__version__), gpu)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    return runtime.deserialize_cuda_engine(path.read_bytes())


def layers(path: Path) -> list[dict[str, Any]]:
    engine = load_engine(path)  # says what is missing: the file, TensorRT, or a GPU
    trt = require_tensorrt()
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return [layer if isinstance(layer, dict) else {"Name": str(layer)} for layer in info.get("Layers", [])]


def is_fused_attention(layer: dict[str, Any]) -> bool:
    return any(marker in json.dumps(layer).lower() for marker in _FUSED_MARKERS)


def attention_fusion_warnings(path: Path) -> list[str]:
    """One warning per Softmax TensorRT kept as a layer of its own: an attention block it did not fuse
    (fused attention runs as one MHA/flash-attention kernel, or inside a Myelin region)."""
    return [f"TensorRT did not fuse the attention at layer {layer.get('Name')}" for layer in layers(path)
            if str(layer.get("LayerType", "")).lower() == "softmax" and not is_fused_attention(layer)]
