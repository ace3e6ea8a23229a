"""Modules that give exporters a positional signature and a flat tuple of tensor outputs."""

from __future__ import annotations

from typing import Any

import torch


def flatten_outputs(result: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, dict):  # includes transformers' ModelOutput
        result = tuple(result.values())
    if isinstance(result, (tuple, list)):
        flat: list[torch.Tensor] = []
        for item in result:
            flat.extend(flatten_outputs(item))
        return tuple(flat)
    if result is None:
        return ()
    raise TypeError(f"model returned {type(result).__name__}, expected tensors")


class TaskWrapper(torch.nn.Module):
    """Calls a transformers model by keyword and returns the task's outputs as a tuple."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.input_names, args))
        result = self.model(**kwargs, return_dict=True)
        return tuple(result[name] for name in self.output_names)


class KeywordWrapper(torch.nn.Module):
    """Calls a user module with keyword inputs (a factory's dict of inputs) given positionally."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.model(**dict(zip(self.input_names, args))))


class PositionalWrapper(torch.nn.Module):
    """Calls a user module positionally and flattens whatever it returns."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.model(*args))
