"""TensorRT engines behind the same Runner interface, on polygraphy's TrtRunner (dynamic shapes within
the engine's optimization profile, device buffers handled for us)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnopt.runtime.base import Runner


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, engine: str | Path):
        self.engine_path = Path(engine)
        self._runner: Any = None

    def activate(self) -> None:
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        from attnopt.engine.inspect import load_engine

        self._runner = PolygraphyTrtRunner(load_engine(self.engine_path))  # checks TensorRT version and GPU
        self._runner.activate()

    @property
    def input_names(self) -> list[str]:
        return list(self._runner.get_input_metadata().keys())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._runner.infer(feed, copy_outputs_to_host=True)
        return {name: np.asarray(value) for name, value in outputs.items()}

    def deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
