"""GPU timing: inputs on the device before the clock starts, ONNX Runtime CUDA through I/O binding (no host
copies in the timed call), PyTorch CUDA synchronised, both interleaved with the CPU backends. Skipped
without a CUDA GPU and onnxruntime-gpu; run on a GPU machine with `python -m pytest -m gpu`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attnopt
from attnopt.runtime import runner_for

from conftest import GPU_MARKS

pytestmark = GPU_MARKS


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu-latency") / "bert.onnx"
    attnopt.export("bert-tiny", path, verify=False)
    return path


def test_ort_cuda_timed_call_uses_io_binding_and_matches_infer(exported: Path) -> None:
    loaded = attnopt.load_model("bert-tiny")
    feed = {k: v.numpy() for k, v in loaded.make_inputs(2, 16, seed=0).items()}
    with runner_for(exported, "cuda", speed=True) as runner:
        assert runner.device == "cuda" and runner.host_copies_timed is False
        outputs = runner.prepare(feed)().get_outputs()
        assert all(value.device_name().lower() == "cuda" for value in outputs)  # never copied to the host
        names = runner.output_names
    with runner_for(exported, "cpu") as cpu:
        want = cpu.infer(feed)
    for name, value in zip(names, outputs):
        np.testing.assert_allclose(value.numpy(), want[name], atol=1e-3, rtol=1e-3)


def test_bench_times_gpu_backends_interleaved_without_host_copies(exported: Path) -> None:
    loaded = attnopt.load_model("bert-tiny")
    result = attnopt.bench(loaded, [exported], seqs=[16], runs=10, warmup=2)
    names = {r["backend"] for r in result.rows}
    assert {"torch-cpu", "torch-cuda", f"ort-cpu:{exported.name}", f"ort-cuda:{exported.name}"} <= names
    assert next(loaded.module.parameters()).device.type == "cpu"  # torch-cuda timed its own copy
    assert result.timing["mode"] == "interleaved"
    assert result.timing["host_copies_timed"] == {"torch-cuda": False, f"ort-cuda:{exported.name}": False}
    assert {c["against"] for c in result.comparisons if c["backend"] == f"ort-cuda:{exported.name}"} == {"torch-cpu"}
