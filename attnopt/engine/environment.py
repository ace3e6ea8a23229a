"""What the TensorRT layer needs from this machine, with one-line errors when it is missing."""

from __future__ import annotations

import importlib.util
from typing import Any

from attnopt.errors import MissingDependencyError

TENSORRT_INSTALL = "pip install 'attnopt[gpu]' (TensorRT 10 or 11) on a machine with an NVIDIA GPU"


def tensorrt_unavailable() -> str:
    """Empty when TensorRT engines can be built and run here, else why not, in one line. The one
    "is TensorRT here" check: everything that offers or skips TensorRT asks this."""
    if installed_tensorrt_version() is None:  # absent, or PyPI's placeholder that does not import
        return "TensorRT is not installed"
    import torch

    return "" if torch.cuda.is_available() else "no CUDA GPU"


def installed_tensorrt_version() -> str | None:
    """The importable TensorRT's version ('10.16.1.11'), else None. Imports it: the PyPI placeholder
    package and a broken install (no libnvinfer) fail that import and count as not installed."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - any failure to load means there is no usable TensorRT
        return None
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def require_tensorrt() -> Any:
    if installed_tensorrt_version() is None:  # absent, or PyPI's placeholder that cannot be imported
        raise MissingDependencyError("TensorRT is not installed", TENSORRT_INSTALL)
    import tensorrt

    return tensorrt


def require_cuda_gpu() -> dict[str, Any]:
    """Name and compute capability of GPU 0, or a clear error."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise MissingDependencyError("PyTorch is not installed") from exc
    if not torch.cuda.is_available():
        raise MissingDependencyError("no CUDA GPU is visible: TensorRT engines are built and run on an NVIDIA GPU",
                                     "run on a machine with an NVIDIA GPU and its driver (nvidia-smi must list it)")
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])
