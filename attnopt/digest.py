"""Content hashes: what `attnopt run` keys its stage cache on and what an engine records of its source
model. One hash for files (with a model's external data file), folders and JSON-able values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def _update_with_file(digest: Any, path: Path) -> None:
    digest.update(path.name.encode())
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)


def content_digest(*parts: Any) -> str:
    """sha256 over `parts`: a file (and its `.data` external weights beside it, which are part of the
    model), every file of a folder in name order, or any JSON-able value."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            data = part.with_name(part.name + ".data")
            if part.is_file() and data.is_file():
                files.append(data)
            for path in files:
                if path.is_file():
                    _update_with_file(digest, path)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()
