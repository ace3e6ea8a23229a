"""The one place a runner is chosen: the PyTorch module or an artifact (ONNX model, TensorRT engine), on a
device, for parity (exact numerics) or for speed, or the one-line reason it cannot run here. `attnopt
check` and `attnopt bench` both come through here."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attnopt.errors import MissingDependencyError
from attnopt.runtime.base import Runner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CUDA_HINT = "run on a machine with an NVIDIA GPU, its driver and a CUDA build of torch"


def artifact_kind(path: Path) -> str:
    """onnx or tensorrt, by the file's suffix."""
    return "tensorrt" if Path(path).suffix in ENGINE_SUFFIXES else "onnx"


@dataclass(frozen=True)
class RunnerChoice:
    runtime: str  # torch | ort | tensorrt
    device: str  # cpu | cuda
    make: Callable[[], Runner] | None  # None when it cannot run here
    unavailable: str = ""
    hint: str = ""

    def open(self) -> Runner:
        """A new, not yet activated runner, or a one-line MissingDependencyError saying why not."""
        if self.make is None:
            raise MissingDependencyError(self.unavailable, self.hint or None)
        return self.make()


def _torch_unavailable(device: str) -> str:
    if device == "cpu":
        return ""
    import torch

    return "" if torch.cuda.is_available() else "no CUDA GPU"


def choose_runner(target: Any, device: str = "cpu", *, speed: bool = False, threads: int | None = None,
                  flush_denormals: bool = True, shared_cache: Any = None) -> RunnerChoice:
    """`target` is a loaded model (its torch module) or an artifact path. With `speed`, ONNX Runtime CPU
    sessions take `threads` and, unless `flush_denormals` is False, flush denormals to zero; without it
    (parity) every session keeps ONNX Runtime's exact IEEE numerics and default threading. `shared_cache`
    (a CacheLayout) times a decoder's steps in one buffer for past and present (OrtRunner.prepare)."""
    if device not in ("cpu", "cuda"):
        raise MissingDependencyError(f"unknown device {device!r}", "choose cpu or cuda")
    if not isinstance(target, (str, Path)):
        reason = _torch_unavailable(device)
        if reason:
            return RunnerChoice("torch", device, None, reason, CUDA_HINT)
        from attnopt.runtime.torch import TorchRunner

        def make() -> Runner:
            # activate() moves the module to its device: a CUDA runner gets its own copy, so a CPU runner of
            # the same model can be alive beside it (interleaved timing)
            module = target.module if device == "cpu" else copy.deepcopy(target.module)
            return TorchRunner(module, target.input_names, target.output_names, device=device)
        return RunnerChoice("torch", device, make)
    path = Path(target)
    if artifact_kind(path) == "tensorrt":
        from attnopt.engine.environment import TENSORRT_INSTALL, tensorrt_unavailable

        reason = "a TensorRT engine runs on a CUDA GPU only" if device != "cuda" else tensorrt_unavailable()
        if reason:
            return RunnerChoice("tensorrt", device, None, reason, TENSORRT_INSTALL)
        from attnopt.runtime.tensorrt import TrtRunner

        return RunnerChoice("tensorrt", device, lambda: TrtRunner(path))
    from attnopt.runtime.onnxruntime import FLUSH_DENORMALS, ORT_GPU_INSTALL, OrtRunner, ort_providers, ort_unavailable

    reason = ort_unavailable(device)
    if reason:
        return RunnerChoice("ort", device, None, reason, ORT_GPU_INSTALL)
    config = FLUSH_DENORMALS if speed and flush_denormals and device == "cpu" else None
    return RunnerChoice("ort", device, lambda: OrtRunner(path, providers=ort_providers(device),
                                                         threads=threads if speed else None, config=config,
                                                         shared_cache=shared_cache))


def runner_for(target: Any, device: str = "cpu", **options: Any) -> Runner:
    """choose_runner(...).open(): the runner, or a one-line error saying why it cannot run here."""
    return choose_runner(target, device, **options).open()
