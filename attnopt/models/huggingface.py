"""Hugging Face models: a local folder, a hub id already in the local cache, or a config built in code."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

from attnopt.errors import ModelSourceError, UnsupportedTaskError
from attnopt.models.loaded import TASKS, InputSpec, LoadedModel

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


def quiet_transformers() -> None:
    """transformers' progress bars and warnings would drown our own output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _instantiate(task: str, config: Any, folder: str | None) -> Any:
    import torch

    quiet_transformers()

    cls = auto_class(task, config)
    if task == "sequence-classification" and getattr(config, "pad_token_id", 0) is None:
        # decoder-only classifiers pool the last non-pad token and refuse batches without a pad id
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    try:
        if folder is None:
            torch.manual_seed(0)  # random-init presets are deterministic
            model = cls.from_config(config)
        else:
            model = cls.from_pretrained(folder, config=config)
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


def wrap(model: Any, config: Any, task: str, source: dict[str, Any], tokenizer_path: str | None) -> LoadedModel:
    from attnopt.models.wrappers import TaskWrapper

    if task == "causal-lm" and hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # export without a KV cache for now
    inputs = _input_specs(model, config)
    outputs = _TASK_OUTPUTS[task]
    wrapper = TaskWrapper(model, [s.name for s in inputs], outputs).eval()
    axes = dict(_OUTPUT_AXES[task]) if inputs[0].kind != "pixel_values" else {0: "batch"}
    output_axes = {name: axes for name in outputs}
    return LoadedModel(wrapper, inputs, outputs, task, source, config=config, tokenizer_path=tokenizer_path,
                       output_axes=output_axes)


def load_config(folder: str) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError) as exc:
        raise ModelSourceError(
            f"{folder}: architecture not known to transformers {transformers.__version__}: {exc}".splitlines()[0],
            "upgrade transformers, or pass a file.py:factory that builds the model",
        ) from exc


def load_folder(folder: str, task: str, source: dict[str, Any]) -> LoadedModel:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder",
            "point at the folder that holds config.json and the weights",
        )
    config = load_config(folder)
    model = _instantiate(task, config, folder)
    has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))
    return wrap(model, config, task, source, str(path) if has_tokenizer else None)


def load_from_config(config: Any, task: str, source: dict[str, Any]) -> LoadedModel:
    return wrap(_instantiate(task, config, None), config, task, source, None)


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.endswith(".py")


def cached_hub_folder(repo_id: str) -> str:
    """The snapshot folder of a hub id in the local cache; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, validation errors, offline errors
        raise ModelSourceError(
            f"{repo_id!r} is neither a local path, a preset, nor a model in the local Hugging Face cache",
            f"on a connected machine run `hf download {repo_id}`, or pass a local model folder; "
            "`attnopt models` lists the presets",
        ) from exc
