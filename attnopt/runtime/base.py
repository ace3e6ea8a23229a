"""The runner protocol shared by parity checks and benchmarks (after polygraphy's runners)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Runner(ABC):
    """Activate once (load the model, open a session), infer many times, deactivate once."""

    name: str = "runner"

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @abstractmethod
    def activate(self) -> None: ...

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed numpy arrays by input name; get numpy arrays by output name."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass
