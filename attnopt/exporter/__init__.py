"""torch -> ONNX: export with fallback, verify, write a sidecar; every write atomic."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from attnopt.artifacts import check_output, staged
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError, ExportError, OutputError, first_line
from attnopt.exporter.opset import MIN_OPSET, TORCHSCRIPT_MAX_OPSET, default_opset
from attnopt.exporter.sidecar import describe_io, sidecar_path, versions, write_sidecar
from attnopt.exporter.torch_export import (EXTERNAL_DATA_THRESHOLD, export_dynamo, export_torchscript)
from attnopt.exporter.verify import Verification, run_checker, verification_shapes, verify_export
from attnopt.models import LoadedModel, load_model
from attnopt.parity.tolerance import Tolerance

EXPORTERS = ("dynamo", "torchscript")


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    exporter: str
    opset: int
    external_data: bool
    #: a Verification, or for a decoder with a cache a GenerationParity (both have .passed and .to_dict())
    verification: Any
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: files written beside the model for a runtime (decoders: tokenizer, generation and genai configs)
    runtime_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verification is None or self.verification.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "sidecar": str(self.sidecar), "exporter": self.exporter,
            "opset": self.opset, "external_data": self.external_data, "notes": self.notes,
            "seconds": round(self.seconds, 2), "ok": self.ok, "runtime_files": self.runtime_files,
            "verification": self.verification.to_dict() if self.verification else None,
        }


def export(
    model: str | LoadedModel,
    output: str | Path | None = None,
    *,
    task: str | None = None,
    cache: bool = True,
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
    verification against PyTorch left tolerance (the files are written either way, and say so).

    task None: inferred from the model's config. A causal LM exports with its KV cache (cache=False: logits
    only) into a folder a runtime loads, verified over whole generations. output None: ./<name>.onnx, or
    ./<name>/model.onnx for a decoder with a cache. A missing output folder is created when its parent
    exists (and removed again when the export fails)."""
    start = time.perf_counter()
    _check_options(exporter, opset, batch, seq)
    if output is not None:  # refuse before the (long) load what will be refused anyway
        check_output_folder_parent(Path(output))
        if Path(output).parent.is_dir():
            check_output(Path(output), force)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        with progress.step(f"Loading {model}"):
            loaded = load_model(model, task, cache=cache)
    decoder = loaded.cache is not None
    if decoder and not dynamic:
        raise AttnoptError("a decoder with a KV cache needs dynamic axes (its past grows every step)",
                           "drop --static, or export without the cache (--no-cache)")
    path = Path(output) if output is not None else default_output(loaded, str(model), decoder)
    with created_folder(path.parent):
        check_output(path, force)
        return _export_into(loaded, path, decoder, batch, seq, opset or default_opset(), exporter, dynamic,
                            verify, tolerance, progress, start)


def _export_into(loaded: LoadedModel, path: Path, decoder: bool, batch: int, seq: int, opset: int, exporter: str,
                 dynamic: bool, verify: bool, tolerance: Tolerance, progress: Progress, start: float) -> ExportResult:
    external = loaded.parameter_bytes() > EXTERNAL_DATA_THRESHOLD
    if decoder:  # every traced size >= 2 and all different: nothing specialises to 0/1 or ties two axes
        batch, seq, past = DECODER_EXAMPLE
        args = tuple(loaded.make_inputs(batch, seq, seed=0, past=past).values())
    else:
        args = tuple(loaded.make_inputs(batch, seq, seed=0).values())
    notes: list[str] = []
    runtime_files: list[str] = []
    with staged(path) as stage:
        staged_model = stage / path.name
        with _quiet_torch_logs(progress):
            used, opset = _export_with_fallback(loaded, args, staged_model, opset, exporter, dynamic, external,
                                                notes, progress)
        verification: Any = None
        if verify and decoder:
            with progress.step("Verifying generations against PyTorch and Hugging Face generate"):
                verification = verify_decoder_export(loaded, staged_model, tolerance)
        elif verify:
            shapes = verification_shapes(loaded, batch, seq, dynamic)
            with progress.step(f"Verifying against PyTorch at shapes {shapes}"):
                verification = verify_export(loaded, staged_model, shapes, tolerance)
        if decoder:
            from attnopt.generation.runtime_folder import write_runtime_files

            runtime_files = write_runtime_files(stage, loaded, path.name)
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
        if decoder:
            content["decoder"] = {"cache": loaded.cache.to_dict(), "runtime_files": runtime_files}
        write_sidecar(stage / sidecar_path(path).name, content)
    return ExportResult(path, sidecar_path(path), used, opset, external, verification, notes,
                        time.perf_counter() - start, runtime_files)


#: (batch, seq, past) a decoder with a cache is traced at
DECODER_EXAMPLE = (2, 3, 5)


def default_output(loaded: LoadedModel, spec: str, decoder: bool) -> Path:
    """./<name>.onnx, or ./<name>/model.onnx for a decoder: the preset's name, or the folder's."""
    name = Path(str(loaded.source.get("spec", spec)).rstrip("/")).name or "model"
    name = name.rpartition(":")[0].removesuffix(".py") if ":" in name else name
    if not decoder:
        return Path(f"{name}.onnx")
    source = loaded.source.get("path")
    if source and Path(name).resolve() == Path(source).resolve():  # never write into the user's model folder
        name = f"{name}-onnx"
    return Path(name) / "model.onnx"


@contextmanager
def created_folder(folder: Path) -> Iterator[None]:
    """Creates the output's folder when it is missing and its own parent exists (as `mkdir`, not `mkdir -p`:
    a mistyped deeper path is still refused by check_output); removes it again if the body fails."""
    created = bool(str(folder)) and not folder.exists() and folder.parent.is_dir()
    if created:
        folder.mkdir()
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def check_output_folder_parent(path: Path) -> None:
    """An output whose folder will not be created is refused before the (long) load."""
    folder = path.parent
    if str(folder) and not folder.exists() and not folder.parent.is_dir():
        raise OutputError(f"{folder.parent} does not exist", "create the folder first")


def verify_decoder_export(loaded: LoadedModel, model_path: Path, tolerance: Tolerance) -> Any:
    from attnopt.parity.generation import verify_generation
    from attnopt.runtime import OrtRunner

    checker = run_checker(model_path)
    with OrtRunner(model_path) as runner:
        result = verify_generation(loaded, runner.infer, tolerance)
    if checker != "passed" and not result.error:
        result.error = f"onnx checker {checker}"
    return result


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

    if exporter == "dynamo":
        try:
            with progress.step(f"Exporting with the dynamo exporter (opset {opset})"), torch.no_grad():
                export_dynamo(loaded, args, path, opset, dynamic, external)
            return "dynamo", opset
        except Exception as exc:  # the dynamo exporter fails in many ways; all of them fall back
            reason = f"{type(exc).__name__}: {first_line(exc)}"
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
        raise ExportError(f"export failed: {type(exc).__name__}: {first_line(exc)}",
                          "run with --debug for the traceback") from exc
    return "torchscript", ts_opset


@contextmanager
def _quiet_torch_logs(progress: Progress) -> Iterator[None]:
    """torch's exporter logs registry warnings (torchvision ops, ...) that say nothing to a user. The
    levels are restored afterwards: a library must not change the caller's logging for good."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                               "torch.export")]
    before = [lg.level for lg in loggers]
    if progress.verbosity < 2:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)
