"""The backends a benchmark can use, each available or skipped with its reason; all behind Runner."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class Backend:
    name: str
    make: Callable[[], Any] | None  # returns a Runner; None when skipped
    skipped: str = ""
    sync: Callable[[], None] = lambda: None


def _cuda_torch() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_cuda() -> bool:
    from attnopt.runtime.onnxruntime import ort_module

    return "CUDAExecutionProvider" in ort_module().get_available_providers()


#: ONNX Runtime's switch for flushing denormals to zero on CPU (masked attention makes them on x86)
FLUSH_DENORMALS = {"session.set_denormal_as_zero": "1"}


def backends_for(loaded: Any, artifacts: list[Path], threads: int, flush_denormals: bool = False) -> list[Backend]:
    from attnopt.runtime import OrtRunner, TorchRunner

    config = FLUSH_DENORMALS if flush_denormals else None

    found = [Backend("torch-cpu", lambda: TorchRunner(loaded.module, loaded.input_names, loaded.output_names))]
    if _cuda_torch():
        import torch

        found.append(Backend("torch-cuda", lambda: TorchRunner(loaded.module, loaded.input_names, loaded.output_names,
                                                               device="cuda"), sync=torch.cuda.synchronize))
    else:
        found.append(Backend("torch-cuda", None, "no CUDA GPU"))
    for path in artifacts:
        if path.suffix == ".onnx":
            found.append(Backend(f"ort-cpu:{path.name}", lambda p=path: OrtRunner(p, threads=threads, config=config)))
            if _ort_cuda():
                found.append(Backend(f"ort-cuda:{path.name}", lambda p=path: OrtRunner(
                    p, providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])))
            else:
                found.append(Backend(f"ort-cuda:{path.name}", None, "onnxruntime has no CUDA provider (onnxruntime-gpu)"))
        else:
            if importlib.util.find_spec("tensorrt") is None:
                found.append(Backend(f"tensorrt:{path.name}", None, "TensorRT is not installed"))
            elif not _cuda_torch():
                found.append(Backend(f"tensorrt:{path.name}", None, "no CUDA GPU"))
            else:
                from attnopt.runtime.tensorrt import TrtRunner

                found.append(Backend(f"tensorrt:{path.name}", lambda p=path: TrtRunner(p)))
    return found
