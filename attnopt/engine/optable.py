"""The TensorRT ONNX parser's published operator tables, one per TensorRT release we describe, kept as data
(engine/data/tensorrt-VERSION-onnx.json, each naming its source), and the choice of one for a TensorRT.

    table = select_table(None)          # the installed TensorRT's table, else the newest
    table = select_table("10.1")        # or "10.15", "11.0", "11.5", "10" / "10.x", "11" / "11.x"
    table.min_opset, table.max_opset, table.supports("RMSNormalization")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from attnopt.errors import AttnoptError

DATA = Path(__file__).parent / "data"
_DEFAULT_DOMAINS = ("", "ai.onnx")

Version = tuple[int, int]
_DETECT: Any = object()  # select_table: read the installed TensorRT from this machine


@dataclass(frozen=True, eq=False)  # hashed by identity: tables hold dicts, and each file loads once
class OperatorTable:
    version: str  # the TensorRT release the table describes, "10.15"
    source: dict[str, Any]  # where its facts come from: repository, ref, file, release notes
    min_opset: int
    max_opset: int
    supported: frozenset[str]
    unsupported: frozenset[str]  # listed by the parser's table as not supported (the rest are unknown to it)
    types: frozenset[str]  # ONNX element types TensorRT takes at all
    op_types: dict[str, tuple[str, ...]]  # per op, the element types the table lists
    restrictions: dict[str, dict[str, Any]]  # per op: constant_inputs, unsupported_inputs/outputs, ...
    strongly_typed_only: bool  # TensorRT 11: precision comes from the graph, no builder precision flags
    chosen_because: str = field(default="", compare=False)  # why select_table picked it, for reports

    @property
    def major(self) -> int:
        return parse_version(self.version)[0]

    @property
    def opsets(self) -> tuple[int, int]:
        return self.min_opset, self.max_opset

    def supports(self, op_type: str, domain: str = "") -> bool:
        """True when the parser imports op_type of that domain natively (custom domains are plugins)."""
        return domain in _DEFAULT_DOMAINS and op_type in self.supported

    def supports_opset(self, opset: int) -> bool:
        return self.min_opset <= opset <= self.max_opset

    def clamp_opset(self, opset: int) -> int:
        """The opset in this table's range nearest to `opset`: what a conversion for this TensorRT targets."""
        return min(max(opset, self.min_opset), self.max_opset)

    def restriction(self, op_type: str) -> dict[str, Any]:
        return self.restrictions.get(op_type, {})

    def describe(self) -> dict[str, Any]:
        """What reports and the engine sidecar record about the table used."""
        return {"version": self.version, "opsets": [self.min_opset, self.max_opset],
                "chosen_because": self.chosen_because, "source": self.source}


def parse_version(text: str) -> Version:
    """'10.16.1.11' -> (10, 16); '11' -> (11, 0). Raises ValueError on anything else."""
    parts = str(text).strip().split(".")
    if not parts[0].isdigit() or (len(parts) > 1 and not parts[1].isdigit()):
        raise ValueError(text)
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def known_versions() -> list[str]:
    found = [p.name[len("tensorrt-"):-len("-onnx.json")] for p in DATA.glob("tensorrt-*-onnx.json")]
    return sorted(found, key=parse_version)


def choices() -> str:
    """The accepted --tensorrt-version values, for errors and help."""
    majors = sorted({parse_version(v)[0] for v in known_versions()})
    return ", ".join(known_versions()) + ", or " + " / ".join(f"{m}.x" for m in majors) + " for the newest of a line"


@lru_cache(maxsize=None)
def load_table(version: str) -> OperatorTable:
    """The table for exactly this version (one of known_versions())."""
    path = DATA / f"tensorrt-{version}-onnx.json"
    if not path.is_file():
        raise AttnoptError(f"no operator table for TensorRT {version}", f"choose {choices()}")
    data = json.loads(path.read_text())
    low, high = data["opsets"]
    return OperatorTable(
        version=data["tensorrt"], source=data["source"], min_opset=low, max_opset=high,
        supported=frozenset(data["supported"]), unsupported=frozenset(data["unsupported"]),
        types=frozenset(data["types"]), op_types={k: tuple(v) for k, v in data.get("op_types", {}).items()},
        restrictions=data.get("restrictions", {}), strongly_typed_only=bool(data.get("strongly_typed_only")))


def _newest_at_or_below(wanted: Version, exact_line: bool) -> str | None:
    """The newest table of wanted's major line whose version is <= wanted: a table never claims ops that
    the TensorRT it stands for may lack. exact_line: any table of the line (for '10' / '10.x')."""
    line = [v for v in known_versions() if parse_version(v)[0] == wanted[0]]
    fitting = line if exact_line else [v for v in line if parse_version(v) <= wanted]
    return fitting[-1] if fitting else None


def _resolve(requested: str, installed: Version | None) -> str:
    """The table a --tensorrt-version names. A line alone ('11', '11.x') means its newest table, or, with
    TensorRT of that line installed, the newest one the installed release can take."""
    text = requested.strip().lower().removesuffix(".x")
    try:
        wanted = parse_version(text)
    except ValueError:
        raise AttnoptError(f"unknown TensorRT version {requested!r}", f"choose {choices()}") from None
    line_only = "." not in text
    if line_only and installed is not None and installed[0] == wanted[0]:
        wanted, line_only = installed, False
    found = _newest_at_or_below(wanted, exact_line=line_only)
    if found is None:
        raise AttnoptError(f"no operator table for TensorRT {requested}", f"choose {choices()}")
    return found


def select_table(requested: str | None = None, installed: str | None = _DETECT) -> OperatorTable:
    """The operator table to check and lower against.

    requested: --tensorrt-version ('10.1', '10.15', '11.5', '10', '10.x', '11', a full '10.16.1'), or None.
    installed: the installed TensorRT's version; left out, it is read from this machine (None: not installed).
    With TensorRT installed, a request must be of its major line and not newer than it (one-line error
    otherwise); with none given, the installed version's table. Without TensorRT: the request, else the newest.
    """
    if installed is _DETECT:
        from attnopt.engine.environment import installed_tensorrt_version

        installed = installed_tensorrt_version()
    mine = parse_version(installed) if installed is not None else None
    if mine is not None and _newest_at_or_below(mine, exact_line=False) is None:
        raise AttnoptError(f"TensorRT {installed} is installed here and attnopt has no operator table for it",
                           f"install TensorRT {' or '.join(sorted({f'{parse_version(v)[0]}.x' for v in known_versions()}))}")
    if requested is None:
        if mine is not None:
            version = _newest_at_or_below(mine, exact_line=False)
            return replace(load_table(version), chosen_because=f"installed TensorRT {installed}")
        return replace(load_table(known_versions()[-1]), chosen_because="newest table; TensorRT is not installed here")
    version = _resolve(requested, mine)
    if mine is not None and not (parse_version(version)[0] == mine[0] and parse_version(version) <= mine):
        usable = [v for v in known_versions() if parse_version(v)[0] == mine[0] and parse_version(v) <= mine]
        raise AttnoptError(f"--tensorrt-version {requested} asks for TensorRT {version}'s operator table, but "
                           f"TensorRT {installed} is installed here",
                           f"leave it out, or choose one this TensorRT takes: {', '.join(usable)}, {mine[0]}.x")
    return replace(load_table(version), chosen_because=f"--tensorrt-version {requested}")
