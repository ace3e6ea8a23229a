"""ONNX Runtime on CPU, or CUDA where onnxruntime-gpu and a GPU are present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnopt.runtime.base import Runner


def ort_module() -> Any:
    from attnopt._lazy import require

    return require("onnxruntime")


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, providers: list[str] | None = None,
                 optimize: bool = True, threads: int | None = None, config: dict[str, str] | None = None):
        self.model = model
        #: session config entries, e.g. {"session.set_denormal_as_zero": "1"}
        self.config = config or {}
        self.providers = providers or ["CPUExecutionProvider"]
        #: False runs the graph as written (ORT_DISABLE_ALL): what pass verification needs
        self.optimize = optimize
        self.threads = threads
        self.session: Any = None

    def activate(self) -> None:
        ort = ort_module()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        for key, value in self.config.items():
            options.add_session_config_entry(key, value)
        model = self.model if isinstance(self.model, bytes) else str(self.model)
        self.session = ort.InferenceSession(model, options, providers=self.providers)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names
        return dict(zip(names, self.session.run(names, feed)))

    def deactivate(self) -> None:
        self.session = None
