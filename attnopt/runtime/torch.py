"""PyTorch eager, the reference every artifact is compared with."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from attnopt.runtime.base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, module: Any, input_names: list[str], output_names: list[str], device: str = "cpu"):
        self.module = module
        self.input_names = input_names
        self.output_names = output_names
        self.device = device
        self.host_copies_timed = False if device != "cpu" else None

    def activate(self) -> None:
        self.module.to(self.device).eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device) for name in self.input_names]
        with torch.inference_mode():
            outputs = self.module(*args)
        return {name: out.detach().float().cpu().numpy() for name, out in zip(self.output_names, outputs)}

    def prepare(self, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        """Inputs already on the device; outputs left there; on CUDA the call waits for the GPU (the same
        synchronised wall clock as every other backend, so ratios compare like with like)."""
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device) for name in self.input_names]
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)

        def call() -> Any:
            with torch.inference_mode():
                out = self.module(*args)
            sync()
            return out
        return call
