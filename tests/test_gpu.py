"""Tier 5: the ort target on ONNX Runtime's CUDA execution provider. Skipped without a CUDA GPU and
onnxruntime-gpu; run on a GPU machine with `python -m pytest -m gpu`."""

from __future__ import annotations

import numpy as np
import pytest

import attnopt
from attnopt.models import load_model
from attnopt.runtime import OrtRunner, TorchRunner

from conftest import GPU_MARKS

pytestmark = GPU_MARKS

#: TF32 off: the check is against fp32 PyTorch at fp32 tolerance
CUDA = [("CUDAExecutionProvider", {"use_tf32": "0"})]


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny"])
def test_ort_target_on_cuda_matches_pytorch(tmp_path, preset: str) -> None:
    loaded = load_model(preset)
    exported = attnopt.export(loaded, tmp_path / f"{preset}.onnx")
    out = tmp_path / f"{preset}.ort.onnx"
    report = attnopt.optimize(exported.path, out, target="ort").report
    assert report["fusions"]["attention"]["fused"] == report["fusions"]["attention"]["sites"] > 0
    feed = {k: v.numpy() for k, v in loaded.make_inputs(4, 64, seed=2).items()}
    with OrtRunner(out, providers=CUDA) as runner, TorchRunner(loaded.module, loaded.input_names,
                                                                loaded.output_names) as ref:
        assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
        got, want = runner.infer(feed), ref.infer(feed)
    for name in loaded.output_names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-3)
