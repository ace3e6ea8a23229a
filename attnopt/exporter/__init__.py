"""torch -> ONNX: export with fallback, verify, write a sidecar; every write atomic."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnopt.artifacts import check_output, staged
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError, ExportError
from attnopt.exporter.opset import MIN_OPSET, TORCHSCRIPT_MAX_OPSET, default_opset
from attnopt.exporter.sidecar import describe_io, sidecar_path, versions, write_sidecar
from attnopt.exporter.torch_export import (EXTERNAL_DATA_THRESHOLD, export_dynamo, export_torchscript)
from attnopt.exporter.verify import Verification, verification_shapes, verify_export
from attnopt.models import DEFAULT_TASK, LoadedModel, load_model
from attnopt.parity.metrics import Tolerance

EXPORTERS = ("dynamo", "torchscript")


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    exporter: str
    opset: int
    external_data: bool
    verification: Verification | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "sidecar": str(self.sidecar), "exporter": self.exporter,
            "opset": self.opset, "external_data": self.external_data, "notes": self.notes,
            "seconds": round(self.seconds, 2), "ok": self.ok,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def export(
    model: str | LoadedModel,
    output: str | Path,
    *,
    task: str = DEFAULT_TASK,
    batch: int = 2,
    seq: int = 16,
    opset: int | None = None,
    exporter: str = "dynamo",
    dynamic: bool = True,
    verify: bool = True,
    tolerance: Tolerance = Tolerance(),
    force: bool = False,
    progress: Progress = SILENT,
) -> ExportResult:
    """Export MODEL to ONNX at `output`. Returns the result; `result.ok` is False when the
    verification against PyTorch left tolerance (the files are written either way, and say so)."""
    start = time.perf_counter()
    path = Path(output)
    _check_options(exporter, opset, batch, seq)
    check_output(path, force)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        with progress.step(f"Loading {model}"):
            loaded = load_model(model, task)
    opset = opset or default_opset()
    external = loaded.parameter_bytes() > EXTERNAL_DATA_THRESHOLD
    args = tuple(loaded.make_inputs(batch, seq, seed=0).values())
    notes: list[str] = []
    with staged(path) as stage:
        staged_model = stage / path.name
        used, opset = _export_with_fallback(loaded, args, staged_model, opset, exporter, dynamic, external,
                                            notes, progress)
        verification = None
        if verify:
            shapes = verification_shapes(loaded, batch, seq, dynamic)
            with progress.step(f"Verifying against PyTorch at shapes {shapes}"):
                verification = verify_export(loaded, staged_model, shapes, tolerance)
        content = {
            "format": "attnopt.export/1",
            "source": loaded.source,
            "task": loaded.task,
            **describe_io(staged_model),
            "opset": opset,
            "exporter": used,
            "external_data": external,
            "example_shape": {"batch": batch, "seq": seq},
            "notes": notes,
            "versions": versions(),
            "verification": verification.to_dict() if verification else None,
        }
        write_sidecar(stage / sidecar_path(path).name, content)
    return ExportResult(path, sidecar_path(path), used, opset, external, verification, notes,
                        time.perf_counter() - start)


def _check_options(exporter: str, opset: int | None, batch: int, seq: int) -> None:
    if exporter not in EXPORTERS:
        raise AttnoptError(f"unknown exporter {exporter!r}", f"choose one of: {', '.join(EXPORTERS)}")
    if opset is not None and opset < MIN_OPSET:
        raise AttnoptError(f"opset {opset} is too old", f"use --opset {MIN_OPSET} or newer")
    if batch < 1 or seq < 1:
        raise AttnoptError("--batch and --seq must be at least 1")


def _export_with_fallback(loaded: LoadedModel, args: tuple, path: Path, opset: int, exporter: str,
                          dynamic: bool, external: bool, notes: list[str], progress: Progress) -> tuple[str, int]:
    import torch

    _quiet_torch_logs(progress)
    if exporter == "dynamo":
        try:
            with progress.step(f"Exporting with the dynamo exporter (opset {opset})"), torch.no_grad():
                export_dynamo(loaded, args, path, opset, dynamic, external)
            return "dynamo", opset
        except Exception as exc:  # the dynamo exporter fails in many ways; all of them fall back
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            notes.append(f"dynamo exporter failed ({reason[:300]}); fell back to torchscript")
            progress.warn(notes[-1])
            for leftover in path.parent.iterdir():
                leftover.unlink()
    ts_opset = min(opset, TORCHSCRIPT_MAX_OPSET)
    if ts_opset != opset:
        notes.append(f"the TorchScript exporter writes at most opset {TORCHSCRIPT_MAX_OPSET}; used it")
    try:
        with progress.step(f"Exporting with the TorchScript exporter (opset {ts_opset})"), torch.no_grad():
            export_torchscript(loaded, args, path, ts_opset, dynamic, external)
    except Exception as exc:
        raise ExportError(f"export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                          "run with --debug for the traceback") from exc
    return "torchscript", ts_opset


def _quiet_torch_logs(progress: Progress) -> None:
    """torch's exporter logs registry warnings (torchvision ops, ...) that say nothing to a user."""
    import logging

    if progress.verbosity < 2:
        for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export"):
            logging.getLogger(name).setLevel(logging.ERROR)
