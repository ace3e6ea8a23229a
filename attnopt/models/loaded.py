"""What every model source resolves to: a torch module called positionally, and how to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS = ("feature-extraction", "sequence-classification", "causal-lm")
#: the task of a model whose config names no causal LM head (and of every `file.py:factory` model)
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
    #: a decoder exported with a KV cache: its cache layout (attnopt.models.decoder.CacheLayout)
    cache: Any = None
    #: load_tokenizer's result, kept: from a GGUF file every load parses the whole file again (seconds)
    _tokenizer: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def hf_model(self) -> Any:
        """The transformers model inside the export wrapper (what Hugging Face `generate` runs)."""
        return getattr(self.module, "model", self.module)

    def load_tokenizer(self) -> Any:
        """The model's tokenizer, loaded on the first call and shared by the later ones (callers only read it)."""
        from attnopt.models.tokenizer import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, self.source.get("gguf_file"))
        return self._tokenizer

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def make_inputs(self, batch: int, seq: int, seed: int = 0, past: int = 0) -> dict[str, Any]:
        """Seeded valid inputs; `past` is the cache length fed to a decoder exported with a cache."""
        from attnopt.models.inputs import make_inputs

        return make_inputs(self.inputs, batch=batch, seq=seq, seed=seed, past=past)

    def parameter_bytes(self) -> int:
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)
