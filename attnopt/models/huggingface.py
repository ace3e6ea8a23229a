"""Hugging Face models: a local folder, a hub id already in the local cache, or a config built in code."""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from attnopt.errors import ModelSourceError, UnsupportedTaskError, first_line
from attnopt.models.loaded import DEFAULT_TASK, TASKS, InputSpec, LoadedModel

_TASK_OUTPUTS = {
    "feature-extraction": ["last_hidden_state"],
    "sequence-classification": ["logits"],
    "causal-lm": ["logits"],
}
_OUTPUT_AXES = {
    "feature-extraction": {0: "batch", 1: "seq"},
    "sequence-classification": {0: "batch"},
    "causal-lm": {0: "batch", 1: "seq"},
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def auto_class(task: str, config: Any) -> Any:
    import transformers

    vision = getattr(config, "model_type", "") in {"vit", "deit", "beit", "dinov2", "swin", "convnext"}
    names = {
        "feature-extraction": "AutoModel",
        "sequence-classification": (
            "AutoModelForImageClassification" if vision else "AutoModelForSequenceClassification"
        ),
        "causal-lm": "AutoModelForCausalLM",
    }
    if task not in names:
        raise UnsupportedTaskError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    return getattr(transformers, names[task])


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and warnings would drown our own output: off while a model loads, then
    as the caller had them."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _from_source(cls: Any, config: Any, folder: str | None, gguf_file: str | None) -> Any:
    import torch

    if folder is None:
        # random-init presets are deterministic, without reseeding the caller's global generator
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return cls.from_config(config)
    if gguf_file:
        # GGUF weights are dequantized to fp32 (the default would keep the file's own dtype label)
        return cls.from_pretrained(folder, gguf_file=gguf_file, config=config, dtype=torch.float32)
    return cls.from_pretrained(folder, config=config)


def _instantiate(task: str, config: Any, folder: str | None, gguf_file: str | None = None) -> Any:
    cls = auto_class(task, config)
    if task == "sequence-classification" and getattr(config, "pad_token_id", 0) is None:
        # decoder-only classifiers pool the last non-pad token and refuse batches without a pad id
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    try:
        with quiet_transformers():
            model = _from_source(cls, config, folder, gguf_file)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UnsupportedTaskError(
                f"a {config.model_type} model cannot do task {task!r}",
                f"choose another --task (one of: {', '.join(TASKS)})",
            ) from exc
        raise
    if task == "feature-extraction" and getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # features of an encoder-decoder (T5, BART, ...) are the encoder's
    return model.eval()


def _input_specs(model: Any, config: Any) -> list[InputSpec]:
    params = inspect.signature(model.forward).parameters
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(config, "image_size", 224)
        channels = getattr(config, "num_channels", 3)
        return [InputSpec("pixel_values", "pixel_values", "float32", (2, channels, size, size), {0: "batch"})]
    vocab = getattr(config, "vocab_size", None) or 1000
    text_axes = {0: "batch", 1: "seq"}
    specs = [
        InputSpec("input_ids", "token_ids", "int64", (2, 16), text_axes, (0, vocab - 1)),
        InputSpec("attention_mask", "attention_mask", "int64", (2, 16), text_axes, (0, 1)),
    ]
    type_vocab = getattr(config, "type_vocab_size", 0) or 0
    if "token_type_ids" in params and type_vocab > 0:
        specs.append(InputSpec("token_type_ids", "token_type_ids", "int64", (2, 16), text_axes, (0, type_vocab - 1)))
    return specs


def infer_task(config: Any) -> str:
    """A folder whose config names a causal LM head (`...ForCausalLM`, `...LMHeadModel`) is a causal LM;
    anything else keeps the default task."""
    for name in getattr(config, "architectures", None) or []:
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
    return DEFAULT_TASK


def wrap_with_cache(model: Any, config: Any, source: dict[str, Any], tokenizer_path: str | None) -> LoadedModel:
    from attnopt.models.decoder import CausalLMWithCache, input_specs, layout_from_config, output_axes, probe_layout

    named = getattr(config, "architectures", None) or []
    if named and infer_task(config) != "causal-lm":
        # transformers would build an untrained LM head on an encoder (BertLMHeadModel): text, but noise
        raise UnsupportedTaskError(f"this model has no causal LM head (its config names {', '.join(named)})",
                                   "generate with a decoder model (a ...ForCausalLM)")
    try:
        layout = probe_layout(model, layout_from_config(config))
    except (AttributeError, TypeError, ValueError) as exc:  # no cache comes back, or the model refuses one
        raise UnsupportedTaskError(
            f"{type(model).__name__} is not a causal LM with a KV cache ({type(exc).__name__}: {first_line(exc)})",
            "export a decoder model, or pass --no-cache",
        ) from exc
    module = CausalLMWithCache(model, layout).eval()
    outputs = ["logits", *layout.present_names()]
    return LoadedModel(module, input_specs(layout), outputs, "causal-lm", source, config=config,
                       tokenizer_path=tokenizer_path, output_axes=output_axes(layout), cache=layout)


def wrap(model: Any, config: Any, task: str, source: dict[str, Any], tokenizer_path: str | None,
         cache: bool = False) -> LoadedModel:
    from attnopt.models.wrappers import TaskWrapper

    if task == "causal-lm" and cache:
        return wrap_with_cache(model, config, source, tokenizer_path)
    if task == "causal-lm" and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # --no-cache: logits only, the whole prefix recomputed every token
    inputs = _input_specs(model, config)
    outputs = _TASK_OUTPUTS[task]
    wrapper = TaskWrapper(model, [s.name for s in inputs], outputs).eval()
    axes = dict(_OUTPUT_AXES[task]) if inputs[0].kind != "pixel_values" else {0: "batch"}
    output_axes = {name: axes for name in outputs}
    return LoadedModel(wrapper, inputs, outputs, task, source, config=config, tokenizer_path=tokenizer_path,
                       output_axes=output_axes)


def load_config(folder: str, gguf_file: str | None = None) -> Any:
    import transformers

    try:
        if gguf_file:
            return transformers.AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
        return transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError) as exc:
        raise ModelSourceError(
            f"{folder}: architecture not known to transformers {transformers.__version__}: {first_line(exc)}",
            "upgrade transformers, or pass a file.py:factory that builds the model",
        ) from exc


def load_folder(folder: str, task: str | None, source: dict[str, Any], cache: bool = True,
                gguf_file: str | None = None) -> LoadedModel:
    """task None: inferred from the config. A GGUF file in the folder stands for config and weights."""
    path = Path(folder)
    if gguf_file:
        config = load_config(folder, gguf_file)
        task = task or "causal-lm"  # GGUF holds language models; its config names no architecture
        model = _instantiate(task, config, folder, gguf_file)
        source = {**source, "gguf_file": gguf_file}
        return wrap(model, config, task, source, str(path), cache)
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder",
            "point at the folder that holds config.json and the weights",
        )
    config = load_config(folder)
    task = task or infer_task(config)
    model = _instantiate(task, config, folder)
    has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))
    return wrap(model, config, task, source, str(path) if has_tokenizer else None, cache)


def load_from_config(config: Any, task: str | None, source: dict[str, Any], cache: bool = True) -> LoadedModel:
    task = task or infer_task(config)
    return wrap(_instantiate(task, config, None), config, task, source, None, cache)


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.endswith(".py")


def cached_hub_folder(repo_id: str) -> str:
    """The snapshot folder of a hub id in the local cache; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, validation errors, offline errors
        raise ModelSourceError(
            f"{repo_id!r} is neither a local path, a preset, nor a model in the local Hugging Face cache",
            f"on a connected machine run `hf download {repo_id}`, or pass a local model folder; "
            "`attnopt models` lists the presets",
        ) from exc
