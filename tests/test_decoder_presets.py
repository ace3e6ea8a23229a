"""Every random-init decoder preset (GQA, MQA, head_dim != hidden/heads, partial rotary, learned positions,
q/k/v biases, parallel attention and MLP, sliding window, tied embeddings) exports with its KV cache and
passes parity over generations in fp32: per-step logits and presents, and Hugging Face's greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

import attnopt
from attnopt.models.presets import DECODER_PRESETS

NAMES = [p.name for p in DECODER_PRESETS]


def _export_and_verify(preset: str, folder: Path, exporter: str) -> None:
    result = attnopt.export(preset, folder / preset / "model.onnx", exporter=exporter)
    parity = result.verification
    assert result.exporter == exporter, result.notes
    assert result.ok, parity.first_failure
    assert parity.tokens.first_divergence is None
    assert {s.scenario for s in parity.steps} == {"prefill (empty past)", "decode", "chunked prefill"}


def test_at_least_eight_architectures() -> None:
    types = {preset.config().model_type for preset in DECODER_PRESETS}
    assert len(types) >= 8, types


@pytest.mark.parametrize("preset", NAMES)
def test_decoder_preset_torchscript(tmp_path: Path, preset: str) -> None:
    _export_and_verify(preset, tmp_path, "torchscript")


@pytest.mark.slow
@pytest.mark.parametrize("preset", NAMES)
def test_decoder_preset_dynamo(tmp_path: Path, preset: str) -> None:
    _export_and_verify(preset, tmp_path, "dynamo")
