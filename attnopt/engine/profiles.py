"""Optimization profiles: (min, opt, max) shapes per input, parsed, defaulted and validated against the
model before TensorRT is touched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attnopt.errors import AttnoptError

Shape = tuple[int, ...]

#: default ranges of the named dynamic axes, where the user gives none: (min, max); opt is the export's shape
DEFAULT_RANGES = {"batch": (1, 32), "seq": (1, 512)}


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_profiles(text: str) -> dict[str, InputProfile]:
    """'input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512' (inputs separated by spaces or ';')."""
    profiles = {}
    for item in text.replace(";", " ").split():
        name, sep, shapes = item.partition(":")
        parts = shapes.split(",")
        if not sep or not name or len(parts) != 3:
            raise AttnoptError(f"bad profile {item!r}", "write NAME:MIN,OPT,MAX with shapes like 1x16, e.g. "
                                                        "input_ids:1x16,8x128,32x512")
        try:
            dims = [tuple(int(d) for d in p.lower().split("x")) for p in parts]
        except ValueError as exc:
            raise AttnoptError(f"bad profile {item!r}: sizes must be integers like 8x128") from exc
        profiles[name] = InputProfile(name, *dims)
    if not profiles:
        raise AttnoptError("no profile given", "write NAME:MIN,OPT,MAX, e.g. input_ids:1x16,8x128,32x512")
    return profiles


def default_profiles(inputs: list[dict[str, Any]], example: dict[str, int] | None) -> dict[str, InputProfile]:
    """From the export sidecar's inputs (dims with names for dynamic axes) and example shape."""
    example = example or {"batch": 2, "seq": 16}
    profiles = {}
    for spec in inputs:
        lo, opt, hi = [], [], []
        for dim in spec["shape"]:
            if isinstance(dim, int) and dim > 0:
                lo.append(dim), opt.append(dim), hi.append(dim)
                continue
            name = dim if dim in DEFAULT_RANGES else ("batch" if not lo else "seq")
            low, high = DEFAULT_RANGES[name]
            lo.append(low), opt.append(min(max(example.get(name, low), low), high)), hi.append(high)
        profiles[spec["name"]] = InputProfile(spec["name"], tuple(lo), tuple(opt), tuple(hi))
    return profiles


def validate_profiles(profiles: dict[str, InputProfile], inputs: list[dict[str, Any]]) -> None:
    """Names, ranks, static axes, min <= opt <= max, and one batch range across inputs."""
    declared = {spec["name"]: spec["shape"] for spec in inputs}
    unknown = sorted(set(profiles) - set(declared))
    if unknown:
        raise AttnoptError(f"profile for unknown input(s) {unknown}", f"the model's inputs are {sorted(declared)}")
    batch: dict[str, tuple[int, int, int]] = {}
    for name, dims in declared.items():
        dynamic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
        if name not in profiles:
            if dynamic:
                raise AttnoptError(f"input {name} has dynamic axes {dynamic} and no profile covers them",
                                   f"add {name}:MIN,OPT,MAX to --shapes")
            continue
        p = profiles[name]
        for label, shape in (("min", p.min), ("opt", p.opt), ("max", p.max)):
            if len(shape) != len(dims):
                raise AttnoptError(f"profile {name} {label} has rank {len(shape)}; the input has rank {len(dims)}")
        for axis, dim in enumerate(dims):
            lo, opt, hi = p.min[axis], p.opt[axis], p.max[axis]
            if isinstance(dim, int) and dim > 0 and not lo == opt == hi == dim:
                raise AttnoptError(f"profile {name} axis {axis} must be {dim} (a static axis of the model)")
            if not 1 <= lo <= opt <= hi:
                raise AttnoptError(f"profile {name} axis {axis}: need 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")
        if dims and not (isinstance(dims[0], int) and dims[0] > 0):
            batch[name] = (p.min[0], p.opt[0], p.max[0])
    if len(set(batch.values())) > 1:
        raise AttnoptError(f"inputs disagree on the batch range: {batch}", "give every input the same batch sizes")
