"""The runner protocol shared by parity checks and benchmarks (after polygraphy's runners)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

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

    def prepare(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        """The call a benchmark times, returning only when the work is done (device work included).
        Inputs are converted here, once, outside the timed region; this default times `infer` on host
        arrays, so on a GPU runner host-to-device and back copies are part of each call."""
        names = set(getattr(self, "input_names", feed))
        own = self.declared({k: v for k, v in feed.items() if k in names})
        return lambda: self.infer_declared(own)

    def declared(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feed` in the types the model declares, converted before a timed call (default: as it is)."""
        return feed

    def infer_declared(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`infer` on a feed `declared` has already typed (what a timed call runs)."""
        return self.infer(feed)

    #: whether prepare()'s call copies inputs to the device and outputs back (None: no device, a CPU runner)
    host_copies_timed: bool | None = None

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass
