"""ONNX model files for the use cases: reading one with a one-line error, and writing a result (the
model, external data above the threshold, its sidecar and the JSON report) atomically through a
staging folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx_ir as ir

from attnopt.artifacts import staged
from attnopt.console import Progress
from attnopt.errors import AttnoptError, first_line
from attnopt.exporter.sidecar import sidecar_path, versions, write_sidecar
from attnopt.exporter.torch_export import EXTERNAL_DATA_THRESHOLD, data_file_name
from attnopt.passes.graph_utils import initializer_bytes


def load_onnx(path: Path) -> ir.Model:
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file", "give the path of an .onnx model")
    try:
        return ir.load(path)
    except Exception as exc:
        raise AttnoptError(f"{path} is not a readable ONNX model: {first_line(exc)}") from exc


def save_model(model: ir.Model, path: Path, sidecar: dict[str, Any], progress: Progress) -> None:
    """`model` to `path` with `sidecar` (attnopt's versions added) beside it, both or neither."""
    with staged(path) as stage, progress.step(f"Writing {path}"):
        external = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
        ir.save(model, stage / path.name, external_data=data_file_name(path) if external else None)
        write_sidecar(stage / sidecar_path(path).name, {**sidecar, "versions": versions()})


def save_report(path: Path, content: dict[str, Any]) -> None:
    with staged(path) as stage:
        (stage / path.name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
