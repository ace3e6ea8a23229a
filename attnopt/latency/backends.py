"""The backends a benchmark times: PyTorch eager and every artifact on each device, each a runner chosen
by attnopt.runtime.choose_runner (the same choice `attnopt check` makes), or skipped with the reason;
and which comparisons the report makes (each artifact against the one before it, and the baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attnopt.generation.runtime_folder import declares_shared_buffer
from attnopt.latency.memory import SESSION_FACTOR, artifact_bytes, module_bytes
from attnopt.runtime.onnxruntime import FLUSH_DENORMALS  # noqa: F401 - benchmarks/common.py imports it here
from attnopt.runtime.select import artifact_kind, choose_runner


@dataclass
class Backend:
    name: str
    make: Callable[[], Any] | None  # returns a Runner; None when skipped
    skipped: str = ""
    device: str = "cpu"
    #: bytes it is expected to hold once active (to decide whether all fit at once)
    needs: int = 0
    #: the backend this one is the "after" of: the first artifact on the same device
    before: str = ""


def backends_for(loaded: Any, artifacts: list[Path], threads: int, flush_denormals: bool = True) -> list[Backend]:
    found = []
    for device in ("cpu", "cuda"):
        choice = choose_runner(loaded, device, speed=True, threads=threads)
        found.append(Backend(f"torch-{device}", choice.make, choice.unavailable, device,
                             module_bytes(loaded.module) if device == "cuda" else 0))
    cache = getattr(loaded, "cache", None)
    for path in artifacts:
        devices = ("cuda",) if artifact_kind(path) == "tensorrt" else ("cpu", "cuda")
        # a decoder folder whose genai_config shares the cache buffer is timed that way, as it is run
        shared = cache if cache is not None and declares_shared_buffer(path) else None
        for device in devices:
            choice = choose_runner(path, device, speed=True, threads=threads, flush_denormals=flush_denormals,
                                   shared_cache=shared)
            found.append(Backend(f"{choice.runtime}-{device}:{artifact_name(path, artifacts)}", choice.make,
                                 choice.unavailable, device, int(SESSION_FACTOR * artifact_bytes(path))))
    first: dict[str, str] = {}
    for backend in found[2:]:
        if backend.make is not None:
            backend.before = first.setdefault(backend.device, backend.name)
            if backend.before == backend.name:
                backend.before = ""
    return found


def artifact_name(path: Path, artifacts: list[Path]) -> str:
    """The file's name, with its folder where another artifact has the same name (decoder folders each hold
    a model.onnx: model-ort/model.onnx)."""
    if sum(a.name == path.name for a in artifacts) > 1:
        return f"{path.parent.name}/{path.name}"
    return path.name


def pairs(backends: list[Backend], baseline: str) -> list[tuple[str, str]]:
    """(backend, against): each artifact against the first on its device, then everything against the baseline."""
    names = {b.name for b in backends if b.make is not None}
    wanted = [(b.name, b.before) for b in backends if b.before in names]
    wanted += [(b.name, baseline) for b in backends if b.name in names and b.name != baseline and baseline in names]
    return list(dict.fromkeys(wanted))
