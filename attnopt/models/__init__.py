"""MODEL spec -> LoadedModel: a preset, a local Hugging Face folder, a cached hub id, or file.py:factory."""

from __future__ import annotations

from pathlib import Path

from attnopt.errors import ModelSourceError, UnsupportedTaskError
from attnopt.models.loaded import DEFAULT_TASK, TASKS, InputSpec, LoadedModel
from attnopt.models.presets import PRESETS

__all__ = ["DEFAULT_TASK", "PRESETS", "TASKS", "InputSpec", "LoadedModel", "load_model"]


def load_model(spec: str, task: str = DEFAULT_TASK) -> LoadedModel:
    from attnopt.models import factory, huggingface

    if task not in TASKS:
        raise UnsupportedTaskError(f"unknown task {task!r}", f"choose one of: {', '.join(TASKS)}")
    if factory.is_factory_spec(spec):
        if task != DEFAULT_TASK:
            raise UnsupportedTaskError(f"--task {task} does not apply to a factory model", "leave --task out")
        return factory.load_factory(spec)
    if spec in PRESETS:
        preset = PRESETS[spec]
        source = {"kind": "preset", "spec": spec}
        if preset.folder is not None:
            folder = preset.folder()
            return huggingface.load_folder(folder, task, {**source, "path": folder})
        return huggingface.load_from_config(preset.config(), task, source)  # type: ignore[misc]
    path = Path(spec).expanduser()
    if path.is_dir():
        return huggingface.load_folder(str(path), task, {"kind": "hf-folder", "spec": spec, "path": str(path.resolve())})
    if path.exists():
        raise ModelSourceError(f"{spec} is a file", "pass a model folder, a preset, a cached hub id or file.py:factory")
    if spec.startswith((".", "/", "~")) or not huggingface.looks_like_hub_id(spec):
        raise ModelSourceError(f"{spec}: no such file or folder", "`attnopt models` lists the presets")
    folder = huggingface.cached_hub_folder(spec)
    return huggingface.load_folder(folder, task, {"kind": "hub-cache", "spec": spec, "path": folder})
