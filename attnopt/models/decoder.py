"""A causal LM with a KV cache as one graph: the layout of its cache, its input specs, and the module that
takes the past as flat tensors and returns logits and every present.

The ecosystem's names (Optimum, onnxruntime-genai): inputs `input_ids`, `attention_mask` [batch, past + seq],
`position_ids`, `past_key_values.{i}.key|value` [batch, kv_heads, past, head_dim]; outputs `logits`,
`present.{i}.key|value`. The past is always an input; the first step passes one of length 0."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import torch

from attnopt.errors import AttnoptError
from attnopt.models.loaded import InputSpec

#: symbolic axis names, as onnxruntime-genai and Optimum write them
BATCH, SEQ, PAST, TOTAL = "batch", "sequence_length", "past_sequence_length", "total_sequence_length"


@dataclass(frozen=True)
class CacheLayout:
    """What the graph's past and present look like. kv_heads and head_dim are the config's (never
    hidden / heads), confirmed by one probe forward of the model itself."""

    num_layers: int
    kv_heads: int
    head_dim: int
    num_heads: int
    hidden_size: int
    vocab_size: int
    max_positions: int | None

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def layout_from_config(config: Any) -> CacheLayout:
    """The cache layout the config declares (head_dim and kv_heads read as each architecture names them)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = int(_config_value(text, "num_attention_heads", "n_head", "num_heads"))
    hidden = int(_config_value(text, "hidden_size", "n_embd", "d_model"))
    # multi-query models (falcon, gpt_bigcode) say so with a flag, and falcon's kv head count then does not apply
    if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False):
        kv_heads = 1
    else:
        kv_heads = _config_value(text, "num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    head_dim = _config_value(text, "head_dim") or hidden // heads
    return CacheLayout(
        num_layers=int(_config_value(text, "num_hidden_layers", "n_layer", "num_layers")),
        kv_heads=int(kv_heads), head_dim=int(head_dim), num_heads=heads, hidden_size=hidden,
        vocab_size=int(_config_value(text, "vocab_size")),
        max_positions=_config_value(text, "max_position_embeddings", "n_positions", "seq_length"),
    )


def cache_argument(model: Any) -> str:
    """transformers 5 calls the cache argument `cache`; earlier versions `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def make_cache(past: tuple[torch.Tensor, ...]) -> Any:
    """A transformers DynamicCache holding the flat past (key, value per layer). One full-length layer
    each, also for sliding-window models: the model's own mask applies the window."""
    from transformers import DynamicCache

    return DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])


def flat_cache(cache: Any) -> tuple[torch.Tensor, ...]:
    flat: list[torch.Tensor] = []
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            flat += [layer.keys, layer.values]
    else:  # transformers 4.x
        for key, value in zip(cache.key_cache, cache.value_cache):
            flat += [key, value]
    return tuple(flat)


class CausalLMWithCache(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, *past) -> (logits, *present): the past as flat tensors,
    so both exporters see plain tensor inputs and the graph gets the ecosystem's names one for one."""

    def __init__(self, model: torch.nn.Module, layout: CacheLayout):
        super().__init__()
        self.model = model
        self.layout = layout
        self.cache_argument = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if past and not _tracing():
            check_past(self.layout, input_ids, attention_mask, past)
        cache = make_cache(past)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, return_dict=True, **{self.cache_argument: cache})
        return (out.logits, *flat_cache(out.past_key_values))


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def check_past(layout: CacheLayout, input_ids: Any, attention_mask: Any, past: tuple[Any, ...]) -> None:
    """A past a caller built by hand must be what the graph declares; transformers would otherwise fail deep
    inside attention with a message about matmul shapes. Works on torch tensors and numpy arrays alike."""
    names = layout.past_names()
    if len(past) != len(names):
        raise AttnoptError(f"got {len(past)} past tensors; this model takes {len(names)} "
                           f"({layout.num_layers} layers x key and value)", "pass past_key_values.{i}.key|value per layer")
    batch, seq = tuple(input_ids.shape)
    length = tuple(past[0].shape)[2] if len(tuple(past[0].shape)) == 4 else -1
    expected = (batch, layout.kv_heads, length, layout.head_dim)
    for name, tensor in zip(names, past):
        if tuple(tensor.shape) != expected:
            raise AttnoptError(f"{name} has shape {tuple(tensor.shape)}; expected [batch {batch}, kv_heads "
                               f"{layout.kv_heads}, past, head_dim {layout.head_dim}] with one past length for all",
                               "build the past as [batch, kv_heads, past, head_dim] per layer (empty: past 0)")
    if tuple(attention_mask.shape) != (batch, length + seq):
        raise AttnoptError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected [batch {batch}, "
                           f"past + sequence = {length + seq}]", "the mask covers the past and the new tokens")


def probe_layout(model: torch.nn.Module, declared: CacheLayout) -> CacheLayout:
    """One 2-token forward with a fresh cache: the cache the model really writes wins over the config's
    layout, so the graph never declares shapes that its tensors do not have."""
    ids = torch.zeros(1, 2, dtype=torch.int64)
    with torch.no_grad():
        outputs = CausalLMWithCache(model, declared)(ids, torch.ones(1, 2, dtype=torch.int64),
                                                     torch.arange(2).unsqueeze(0))
    presents = outputs[1:]
    if len(presents) != 2 * declared.num_layers:
        raise AttnoptError(f"the model wrote {len(presents) // 2} cache layers, its config says {declared.num_layers}",
                           "export with --no-cache")
    shape = tuple(presents[0].shape)
    if shape[1] != declared.kv_heads or shape[3] != declared.head_dim:
        return CacheLayout(declared.num_layers, shape[1], shape[3], declared.num_heads, declared.hidden_size,
                           declared.vocab_size, declared.max_positions)
    return declared


def input_specs(layout: CacheLayout, batch: int = 2, seq: int = 3, past: int = 5) -> list[InputSpec]:
    """Specs of the graph's inputs. The example sizes are all >= 2 and all different, so tracing never
    specialises a dynamic axis to 0 or 1, nor ties two axes together."""
    token_axes = {0: BATCH, 1: SEQ}
    specs = [
        InputSpec("input_ids", "token_ids", "int64", (batch, seq), token_axes, (0, layout.vocab_size - 1)),
        InputSpec("attention_mask", "attention_mask", "int64", (batch, past + seq), {0: BATCH, 1: TOTAL}, (0, 1)),
        InputSpec("position_ids", "position_ids", "int64", (batch, seq), token_axes),
    ]
    shape = (batch, layout.kv_heads, past, layout.head_dim)
    specs += [InputSpec(name, "past", "float32", shape, {0: BATCH, 2: PAST}) for name in layout.past_names()]
    return specs


def output_axes(layout: CacheLayout) -> dict[str, dict[int, str]]:
    axes = {"logits": {0: BATCH, 1: SEQ}}
    axes.update({name: {0: BATCH, 2: TOTAL} for name in layout.present_names()})
    return axes
