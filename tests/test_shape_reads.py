"""Shape reads moved upstream (passes/shape_reads): each rule gives the Shape the same value on ONNX Runtime,
and a tensor read only for its shape stops keeping its producers alive (TorchScript's Q and V projections)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import attnopt
from attnopt.passes.cleanup import infer_shapes, tidy
from attnopt.passes.shape_reads import move_shape_reads
from attnopt.passes.verify import run_model

import graphs

# every rule: a same-shape op, Transpose (with Shape's start/end), MatMul by a constant weight, Reshape with a
# -1 resolved from the weight's width, and a Reshape whose target has a run-time piece; the data outputs are
# only Shape's, so each producer is read for its shape alone
SHAPES_ONLY = """
agraph (float[B, S, 8] x) => (int64[4] heads, int64[2] middle, int64[3] projected, int64[3] merged) {
    w = Constant <value = float[8, 12] {""" + ", ".join(["0.5"] * 96) + """}> ()
    p = MatMul (x, w)
    b = Shape <start = 0, end = 1> (x)
    s = Shape <start = 1, end = 2> (x)
    width = Constant <value = int64[2] {-1, 4}> ()
    target = Concat <axis = 0> (b, s, width)
    split = Reshape (p, target)
    t = Transpose <perm = [0, 2, 1, 3]> (split)
    act = Sigmoid (t)
    heads = Shape (act)
    middle = Shape <start = 1, end = -1> (t)
    projected = Shape (p)
    back = Transpose <perm = [0, 2, 1, 3]> (t)
    twelve = Constant <value = int64[1] {12}> ()
    tail = Concat <axis = 0> (b, s, twelve)
    flat = Reshape (back, tail)
    merged = Shape (flat)
}
"""


def _model(text: str) -> ir.Model:
    model = ir.serde.deserialize_model(graphs.parse(text))
    infer_shapes(model)
    return model


def test_each_rule_reads_the_same_shape_from_upstream() -> None:
    model = _model(SHAPES_ONLY)
    feeds = [{"x": np.ones((b, s, 8), np.float32)} for b, s in ((2, 3), (1, 7))]
    before = run_model(model, feeds)
    assert move_shape_reads(model) >= 5
    tidy(model)
    ops = Counter(n.op_type for n in model.graph)
    assert not ops["MatMul"] and not ops["Transpose"] and not ops["Sigmoid"], ops  # read for their shapes only
    after = run_model(model, feeds)
    for want, got in zip(before, after):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_reshape_copying_an_axis_or_with_an_unresolved_size_is_left() -> None:
    """Reshape(y, [0, -1]) copies an axis and Reshape(y, [-1, n]) of an unknown-width y cannot say its -1:
    neither is rewritten, and the Shapes still read the Reshape."""
    model = _model("""
    agraph (float[B, S, K] y) => (int64[2] copied, int64[2] unknown) {
        keep = Constant <value = int64[2] {0, -1}> ()
        a = Reshape (y, keep)
        copied = Shape (a)
        width = Constant <value = int64[2] {-1, 4}> ()
        c = Reshape (y, width)
        unknown = Shape (c)
    }
    """)
    assert move_shape_reads(model) == 0
    assert Counter(n.op_type for n in model.graph)["Reshape"] == 2


@pytest.mark.slow
def test_torchscript_decoder_keeps_no_projection_for_its_shape(tmp_path: Path) -> None:
    """The TorchScript export of a Llama reads its Q and V projections' shapes after attention is fused:
    without moving those reads, 2 GEMMs a layer stay alive. Both exporters' ort graphs hold the same MatMuls."""
    counts = {}
    for exporter in ("torchscript", "dynamo"):
        (tmp_path / exporter).mkdir()
        raw = attnopt.export("llama-tiny", tmp_path / exporter / "export" / "model.onnx", task="causal-lm", exporter=exporter,
                             verify=False).path
        optimized = attnopt.optimize(raw, tmp_path / exporter / "ort" / "model.onnx", target="ort")  # verified
        assert optimized.report["fusions"]["attention"]["fused"] == 2
        counts[exporter] = Counter(n.op_type for n in ir.load(optimized.path).graph)["MatMul"]
    assert counts["torchscript"] == counts["dynamo"] == 11, counts  # Q/K/V packed, o, gate, up, down x2, head
