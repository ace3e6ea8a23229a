"""What every model source resolves to: a torch module called positionally, and how to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("feature-extraction", "sequence-classification", "causal-lm")
DEFAULT_TASK = "feature-extraction"


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, what kind of values it holds and which axes are dynamic."""

    name: str
    #: token_ids | attention_mask | token_type_ids | pixel_values | tensor
    kind: str
    dtype: str  # torch dtype name, e.g. "int64"
    #: example shape; dynamic axes are resized, the others kept
    shape: tuple[int, ...]
    #: axis -> symbolic name ("batch", "seq", ...)
    dynamic_axes: dict[int, str] = field(default_factory=dict)
    #: inclusive value range for integer inputs, e.g. (0, vocab_size - 1)
    value_range: tuple[float, float] | None = None


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module, called as module(*inputs in order)
    inputs: list[InputSpec]
    output_names: list[str]
    task: str
    #: where it came from, as recorded in sidecars: {"kind": ..., "spec": ..., "path": ...}
    source: dict[str, Any]
    config: Any = None  # the transformers config, when there is one
    #: output name -> {axis: symbolic name}, where the source knows them (used by TorchScript export)
    output_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    tokenizer_path: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def make_inputs(self, batch: int, seq: int, seed: int = 0) -> dict[str, Any]:
        from attnopt.models.inputs import make_inputs

        return make_inputs(self.inputs, batch=batch, seq=seq, seed=seed)

    def parameter_bytes(self) -> int:
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)
