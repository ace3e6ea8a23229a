"""PyTorch eager, the reference every artifact is compared with."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnopt.runtime.base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, module: Any, input_names: list[str], output_names: list[str], device: str = "cpu"):
        self.module = module
        self.input_names = input_names
        self.output_names = output_names
        self.device = device

    def activate(self) -> None:
        self.module.to(self.device).eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device) for name in self.input_names]
        with torch.inference_mode():
            outputs = self.module(*args)
        return {name: out.detach().float().cpu().numpy() for name, out in zip(self.output_names, outputs)}
