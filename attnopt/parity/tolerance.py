"""Tolerances: the one type for what an output must satisfy (elementwise atol/rtol, cosine, top-1), the
defaults by precision, and their layers for parity checks: defaults < a config file < the command
line, any of them per output."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from attnopt.errors import AttnoptError


@dataclass(frozen=True)
class Tolerance:
    """What an output must satisfy against its reference. None means the criterion is not applied.
    The defaults are fp32's elementwise test, |actual - expected| <= atol + rtol * |expected|."""

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    cosine: float | None = None  # minimum cosine similarity
    top1: float | None = None  # minimum top-1 agreement (fraction) for logits
    kl: float | None = None  # maximum mean KL(fp32 || reduced) of next-token distributions (quantize only)

    def merged(self, override: dict[str, Any]) -> "Tolerance":
        known = {f.name for f in fields(self)}
        unknown = set(override) - known
        if unknown:
            raise AttnoptError(f"unknown tolerance key(s) {sorted(unknown)}", f"use {sorted(known)}")
        return replace(self, **{k: float(v) for k, v in override.items() if v is not None})

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


DEFAULTS = {
    "fp32": Tolerance(),
    "fp16": Tolerance(atol=1e-2, rtol=None, cosine=0.9999),
    # bf16 keeps 8 mantissa bits: an absolute bound would scale with the activations, so cosine only
    "bf16": Tolerance(atol=None, rtol=None, cosine=0.9995),
    "int8": Tolerance(atol=None, rtol=None, cosine=0.99, top1=0.99),
    # weight-only: for language models top-1 is teacher-forced next-token agreement with fp32 on the
    # calibration text, which near-ties of a small model's next tokens keep below 1 even in 8 bits, so KL
    # (robust to ties) bounds the distributions too; 4-bit weights move them measurably: a lower bar
    "int8-weights": Tolerance(atol=None, rtol=None, cosine=0.99, top1=0.9, kl=0.01),
    "int4": Tolerance(atol=None, rtol=None, cosine=0.95, top1=0.8, kl=0.1),
}

#: a language model's fp16/bf16 is held to its next-token distributions, not to an absolute bound: its logits
#: are unnormalised scores tens in size, where fp16's own spacing is 1/64 to 1/32, so fp16's 1e-2 fails on
#: rounding alone (the real SmolLM2 all in fp16: max abs 0.18 on text, 2.9 on random tokens, with KL 2e-5 and
#: 5e-4, top-1 100% and 98%); bf16's top-1 bar is low for the near-ties of random tokens (SmolLM2 in bf16: 79%
#: on random tokens, 98% on text, KL 3e-3 on both), which KL still bounds; the cosine is of whole logit vectors
LANGUAGE_MODEL_DEFAULTS = {
    "fp16": Tolerance(atol=None, rtol=None, cosine=0.999, top1=0.95, kl=0.005),
    "bf16": Tolerance(atol=None, rtol=None, cosine=0.995, top1=0.75, kl=0.02),
}


def default_tolerance(precision: str, language_model: bool = False) -> Tolerance:
    """What `precision` is held to by default; `language_model`: a causal LM, judged by its logits."""
    if language_model and precision in LANGUAGE_MODEL_DEFAULTS:
        return LANGUAGE_MODEL_DEFAULTS[precision]
    return DEFAULTS.get(precision, DEFAULTS["fp32"])


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except Exception as exc:
        raise AttnoptError(f"{path}: not valid TOML: {exc}") from exc


def find_config(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """attnopt.toml ([check] table) or pyproject.toml ([tool.attnopt.check]), nearest first."""
    folder = (start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents]:
        own = candidate / "attnopt.toml"
        if own.is_file():
            return own, _load_toml(own).get("check", {})
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file():
            table = _load_toml(pyproject).get("tool", {}).get("attnopt", {}).get("check")
            if table is not None:
                return pyproject, table
    return None


@dataclass
class ToleranceSet:
    """Resolves the criteria for (precision, output) from the three layers."""

    config: dict[str, Any]
    cli: dict[str, Any]

    def for_output(self, precision: str, output: str, language_model: bool = False) -> Tolerance:
        """`language_model`: a causal LM's outputs, held to its defaults; KL is quantize's alone (a check
        compares per step, where it is not measured)."""
        criteria = replace(default_tolerance(precision, language_model), kl=None)
        for layer in (self.config, self.cli):
            criteria = criteria.merged({k: v for k, v in layer.items() if k not in ("outputs", precision, *DEFAULTS)})
            criteria = criteria.merged({k: v for k, v in layer.get(precision, {}).items() if k != "outputs"})
            criteria = criteria.merged(layer.get("outputs", {}).get(output, {}))
        return criteria


def load_tolerances(cli: dict[str, Any], config_path: Path | None = None) -> ToleranceSet:
    if config_path is not None:
        if not config_path.is_file():
            raise AttnoptError(f"{config_path}: no such config file")
        data = _load_toml(config_path)
        table = data.get("check", data.get("tool", {}).get("attnopt", {}).get("check", {}))
    else:
        found = find_config()
        table = found[1] if found else {}
    return ToleranceSet(table, {k: v for k, v in cli.items() if v is not None})
