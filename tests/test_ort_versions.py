"""The ort target writes the GroupQueryAttention the onnxruntime it is for loads: the installed one, or
--onnxruntime-version's. query_seqlens (input 16) came with onnxruntime 1.32, and a node naming it does not
load in 1.31 (onnxruntime-gpu's CUDA 13 build at the time of writing: "input size 17 not in range [min=7,
max=16]", seen on an H200). Without it the kernel
runs a chunk of several new tokens on a past at batch 1 only, so verification feeds that chunk as one row,
and it rotates a prompt from each row's first position id on (a left-padded row's cache would be rotated
to the wrong positions), so rotary stays outside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import attnopt
import attnopt.passes.lower.ort as ort_lowering
from attnopt.cli import cli
from attnopt.passes.feeds import make_feeds, model_inputs
from attnopt.passes.lower.ort import OrtLowering
from attnopt.passes.model_files import load_onnx
from attnopt.runtime.onnxruntime import contrib_op_inputs

#: GroupQueryAttention's inputs in onnxruntime 1.31 (com.microsoft, version 1)
INPUTS_1_31 = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
               "sin_cache", "position_ids", "attention_bias", "head_sink", "k_scale", "v_scale", "q_norm_weight",
               "k_norm_weight")


@pytest.fixture(scope="module")
def llama_decoder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama-decoder")
    return attnopt.export("llama-tiny", folder / "export" / "model.onnx", task="causal-lm", verify=False).path


def _gqa_inputs(path: Path) -> list[list[str]]:
    graph = onnx.load(path, load_external_data=False).graph
    return [list(n.input) for n in graph.node if n.op_type == "GroupQueryAttention"]


def test_the_installed_onnxruntime_decides_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = contrib_op_inputs("GroupQueryAttention")
    assert OrtLowering().query_seqlens == (installed is None or "query_seqlens" in installed)
    monkeypatch.setattr(ort_lowering, "contrib_op_inputs", lambda op: INPUTS_1_31)
    assert OrtLowering().query_seqlens is False and OrtLowering().batched_chunks is False


def test_group_query_attention_for_each_onnxruntime(tmp_path: Path, llama_decoder: Path) -> None:
    """--onnxruntime-version 1.32 writes query_seqlens with rotary inside; 1.31 neither, verified here all the
    same (this onnxruntime runs both forms)."""
    if "query_seqlens" not in (contrib_op_inputs("GroupQueryAttention") or ()):
        pytest.skip("the installed onnxruntime has no query_seqlens: it cannot verify the 1.32 form")
    newest = attnopt.optimize(llama_decoder, tmp_path / "newest" / "model.onnx", target="ort",
                              onnxruntime_version="1.32")
    assert "query_seqlens" in newest.report["group_query_attention"]
    assert [len(i) for i in _gqa_inputs(newest.path)] == [17, 17]
    assert newest.report["fusions"]["attention"]["forms"] == {"GroupQueryAttention (KV cache, rotary inside, padding-only bias)": 2}

    result = CliRunner().invoke(cli, ["optimize", str(llama_decoder), "-o", str(tmp_path / "older" / "model.onnx"),
                                      "--onnxruntime-version", "1.31", "--json", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    older = json.loads(result.stdout)
    attention = older["fusions"]["attention"]
    assert attention["fused"] == attention["sites"] == 2, attention
    assert attention["forms"] == {"GroupQueryAttention (KV cache, padding-only bias)": 2}
    assert older["fusions"]["rotary"]["fused"] == 4  # Q and K of both layers, as their own ops
    assert "batch 1 only" in older["group_query_attention"]
    older_path = tmp_path / "older" / "model.onnx"
    assert all(len(inputs) <= len(INPUTS_1_31) for inputs in _gqa_inputs(older_path))

    specs = model_inputs(load_onnx(llama_decoder), None)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    sessions = {k: ort.InferenceSession(str(p), options) for k, p in (("newest", newest.path), ("older", older_path))}
    one_row = make_feeds(specs, 1, 5, seed=0, past=7)
    got = {k: s.run(["logits"], one_row)[0] for k, s in sessions.items()}
    np.testing.assert_allclose(got["older"], got["newest"], atol=1e-5)
    # why the older form is verified on one row: the kernel refuses a chunk on a past for several rows
    with pytest.raises(Exception, match="batch_size must be 1"):
        sessions["older"].run(["logits"], make_feeds(specs, 3, 5, seed=0, past=7))


@pytest.mark.parametrize("args, message", [
    (["--onnxruntime-version", "1.x"], "is not MAJOR.MINOR"),
    (["--onnxruntime-version", "1.31", "--target", "onnx"], "applies to --target ort"),
])
def test_onnxruntime_version_bad_input(tmp_path: Path, llama_decoder: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out" / "model.onnx"
    result = CliRunner().invoke(cli, ["optimize", str(llama_decoder), "-o", str(out), *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.parent.exists()
