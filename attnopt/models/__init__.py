"""MODEL spec -> LoadedModel: a preset, a local Hugging Face folder, a cached hub id, or file.py:factory."""

from __future__ import annotations

from pathlib import Path

from attnopt.errors import ModelSourceError, UnsupportedTaskError
from attnopt.models.loaded import DEFAULT_TASK, TASKS, InputSpec, LoadedModel
from attnopt.models.presets import PRESETS

__all__ = ["DEFAULT_TASK", "PRESETS", "TASKS", "InputSpec", "LoadedModel", "load_model"]


def load_model(spec: str, task: str | None = None, cache: bool = False) -> LoadedModel:
    """task None: the task the model's config names (a `...ForCausalLM` is a causal LM), else the default.
    With cache=True a causal LM takes its KV cache as inputs and returns every present (what `export`
    does by default); without, it returns logits only."""
    from attnopt.models import factory, huggingface

    if task is not None and task not in TASKS:
        raise UnsupportedTaskError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    if factory.is_factory_spec(spec):
        if task not in (None, DEFAULT_TASK):
            raise UnsupportedTaskError(f"--task {task} does not apply to a factory model", "leave --task out")
        return factory.load_factory(spec)
    if spec in PRESETS:
        preset = PRESETS[spec]
        source = {"kind": "preset", "spec": spec}
        if preset.folder is not None:
            folder = preset.folder()
            return huggingface.load_folder(folder, task or preset.task, {**source, "path": folder}, cache,
                                           preset.gguf_file)
        return huggingface.load_from_config(preset.config(), task or preset.task, source, cache)  # type: ignore[misc]
    path = Path(spec).expanduser()
    if path.is_dir():
        return huggingface.load_folder(str(path), task, {"kind": "hf-folder", "spec": spec, "path": str(path.resolve())},
                                       cache)
    if path.exists():
        raise ModelSourceError(f"{spec} is a file", "pass a model folder, a preset, a cached hub id or file.py:factory")
    if spec.startswith((".", "/", "~")) or not huggingface.looks_like_hub_id(spec):
        raise ModelSourceError(f"{spec}: no such file or folder", "`attnopt models` lists the presets")
    folder = huggingface.cached_hub_folder(spec)
    return huggingface.load_folder(folder, task, {"kind": "hub-cache", "spec": spec, "path": folder}, cache)
