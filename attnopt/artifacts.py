"""Atomic artifact writing: build everything in a staging folder beside the output, then rename.

A failure at any point leaves neither a half-written file nor a changed original behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from attnopt.errors import OutputError


def check_output(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Fail early, before any long work, when the output cannot or must not be written."""
    resolved = path.resolve()
    if any(resolved == p.resolve() for p in inputs):
        raise OutputError(f"{path} is also an input; attnopt never overwrites its input", "choose another -o")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder", "give a file path to -o")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists", "pass --force to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{folder} does not exist", "create the folder first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}", "choose a writable output folder")


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yields a staging folder next to `path`; on success every file in it is moved beside `path`.

    Files keep their names, so an ONNX model's external-data references stay valid after the move."""
    folder = path.parent if str(path.parent) else Path(".")
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=folder))
    try:
        yield stage
        for item in sorted(stage.iterdir(), key=lambda p: p.name == path.name):  # the model file last
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
