"""ONNX Runtime on CPU, or CUDA where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attnopt.errors import MissingDependencyError
from attnopt.runtime.base import Runner

#: ONNX Runtime's switch for flushing denormals to zero on CPU (masked attention makes them on x86). For
#: speed only: parity runs keep exact IEEE numerics.
FLUSH_DENORMALS = {"session.set_denormal_as_zero": "1"}
ORT_GPU_INSTALL = "pip install 'attnopt[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU"


def ort_module() -> Any:
    from attnopt._lazy import require

    return require("onnxruntime")


#: caps the intra-op threads of the ONNX Runtime sessions attnopt opens itself where no count is asked for
#: (default: ONNX Runtime's, one per physical core; not onnxruntime.quantization's calibration sessions nor
#: onnxruntime-genai's): jobs side by side (a CI matrix, pytest-xdist workers) each take their share instead of
#: every session spinning a thread per core on the same cores
THREADS_VARIABLE = "ATTNOPT_THREADS"


def session_options(optimize: bool = True, threads: int | None = None, log_level: int = 3) -> Any:
    """ONNX Runtime SessionOptions as attnopt opens sessions: quiet, ORT_DISABLE_ALL unless `optimize` (a graph
    run as written, as verification needs), `threads` intra-op threads, else ATTNOPT_THREADS where set."""
    ort = ort_module()
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    threads = threads or _threads_from_environment()
    if threads:
        options.intra_op_num_threads = threads
    return options


def _threads_from_environment() -> int | None:
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        from attnopt.errors import AttnoptError

        raise AttnoptError(f"{THREADS_VARIABLE}={value!r} is not a thread count", "set it to a whole number >= 1")
    return threads


def ort_unavailable(device: str) -> str:
    """Empty when ONNX Runtime can run on `device` (cpu or cuda) here, else why not."""
    if device == "cpu":
        return ""
    if "CUDAExecutionProvider" not in ort_module().get_available_providers():
        return "onnxruntime has no CUDA provider here (onnxruntime-gpu)"
    import torch

    return "" if torch.cuda.is_available() else "no CUDA GPU"


def ort_providers(device: str) -> list[Any]:
    """cpu, or cuda (onnxruntime-gpu; TF32 off, so fp32 artifacts are held to fp32 tolerances)."""
    reason = ort_unavailable(device)
    if reason:
        raise MissingDependencyError(reason, ORT_GPU_INSTALL)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]


def contrib_op_inputs(op_type: str) -> tuple[str, ...] | None:
    """The input names of the installed ONNX Runtime's com.microsoft `op_type` at its newest version: ops
    gain optional inputs between releases, and a node naming more inputs than the runtime knows does not
    load. None when onnxruntime is not installed or cannot list its schemas."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        every = state.get_all_operator_schema()
    except (ImportError, AttributeError):  # not installed, or a minimal build without schemas
        return None
    schemas = [s for s in every if s.name == op_type and s.domain == "com.microsoft"]
    newest = max(schemas, key=lambda s: s.since_version, default=None)
    return tuple(i.name for i in newest.inputs) if newest is not None else ()


#: ONNX Runtime's float element types as numpy dtypes (numpy has no bfloat16)
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def float_input_types(session: Any) -> dict[str, Any]:
    """A session's float inputs and the numpy dtype each declares."""
    return {i.name: _FLOAT_TYPES[i.type] for i in session.get_inputs() if i.type in _FLOAT_TYPES}


def as_declared(feed: dict[str, Any], float_inputs: dict[str, Any]) -> dict[str, Any]:
    """Float numpy feeds in the float type the model declares for them: a decoder whose KV cache is fp16 at
    its inputs is fed the fp32 zeros of an empty past, or a reference's fp32 cache, rounded."""
    return {k: v.astype(float_inputs[k]) if k in float_inputs and isinstance(v, np.ndarray)
            and v.dtype != float_inputs[k] and np.issubdtype(v.dtype, np.floating) else v for k, v in feed.items()}


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else str(provider)


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, providers: list[Any] | None = None,
                 optimize: bool = True, threads: int | None = None, config: dict[str, str] | None = None,
                 shared_cache: Any = None):
        self.model = model
        #: session config entries, e.g. FLUSH_DENORMALS
        self.config = config or {}
        self.providers = providers or ["CPUExecutionProvider"]
        #: False runs the graph as written (ORT_DISABLE_ALL): what pass verification needs
        self.optimize = optimize
        self.threads = threads
        #: the CacheLayout of a decoder whose folder runs past and present in one buffer: a CPU benchmark times
        #: its steps that way (attnopt.generation.shared_cache), as onnxruntime-genai runs them
        self.shared_cache = shared_cache
        self.session: Any = None
        self.float_inputs: dict[str, Any] = {}  # input name -> the numpy float dtype the model declares

    @property
    def device(self) -> str:
        return "cuda" if _provider_name(self.providers[0]) == "CUDAExecutionProvider" else "cpu"

    @property
    def host_copies_timed(self) -> bool | None:  # type: ignore[override]
        return False if self.device == "cuda" else None  # I/O binding keeps inputs and outputs on the GPU

    @property
    def cache_protocol(self) -> str:
        """How prepare()'s call feeds a decoder's KV cache: in one buffer, or concatenated by the graph."""
        return "one buffer for past and present" if self.shared_cache is not None and self.device == "cpu" \
            else "concatenated"

    @property
    def flushes_denormals(self) -> bool:
        return self.config.get("session.set_denormal_as_zero") == "1"

    def activate(self) -> None:
        ort = ort_module()
        options = session_options(self.optimize, self.threads)
        for key, value in self.config.items():
            options.add_session_config_entry(key, value)
        model = self.model if isinstance(self.model, bytes) else str(self.model)
        self.session = ort.InferenceSession(model, options, providers=self.providers)
        self.float_inputs = float_input_types(self.session)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer_declared(self.declared(feed))

    def infer_declared(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names
        return dict(zip(names, self.session.run(names, feed)))

    def declared(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_declared(feed, self.float_inputs)

    def prepare(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        """On CUDA, I/O binding: inputs copied to the GPU once, outputs left there, so the timed call has
        no host copies; run_with_iobinding returns once the GPU work is done. The call returns the binding,
        whose outputs stay on the GPU. A decoder that shares its cache buffer runs its step in that buffer."""
        if self.cache_protocol != "concatenated" and self.shared_cache.past_names()[0] in feed:
            from attnopt.generation.shared_cache import SharedCacheStep

            step = SharedCacheStep(self.session, self.shared_cache)
            held = step.hold(feed)
            return lambda: step(held)
        if self.device != "cuda":  # host arrays, typed once outside the timed call (see declared)
            return super().prepare(feed)
        ort = ort_module()
        binding = self.session.io_binding()
        feed = self.declared(feed)
        for name in self.input_names:
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feed[name]),
                                                                               "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)

        def call() -> Any:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding
        return call

    def deactivate(self) -> None:
        self.session = None
