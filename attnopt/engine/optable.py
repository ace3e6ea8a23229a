"""The TensorRT ONNX parser's published operator table, kept as data (engine/data/*.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data"
DEFAULT_VERSION = "10.1"


@dataclass(frozen=True)
class OperatorTable:
    tensorrt: str
    source: str
    opsets: tuple[int, int]
    supported: frozenset[str]
    unsupported: frozenset[str]
    types: frozenset[str]


@lru_cache(maxsize=None)
def operator_table(version: str = DEFAULT_VERSION) -> OperatorTable:
    path = DATA / f"tensorrt-{version}-onnx.json"
    if not path.is_file():
        known = sorted(p.name.split("-")[1] for p in DATA.glob("tensorrt-*-onnx.json"))
        from attnopt.errors import AttnoptError

        raise AttnoptError(f"no operator table for TensorRT {version}", f"known versions: {', '.join(known)}")
    data = json.loads(path.read_text())
    return OperatorTable(data["tensorrt"], data["source"], tuple(data["opsets"]), frozenset(data["supported"]),
                         frozenset(data["unsupported"]), frozenset(data["types"]))
