"""Numerical verification of a rewrite: the model before and after, on ONNX Runtime CPU with its own
graph optimizations off (so attnopt's rewrite is what gets tested), at two input shapes, each output in
units of its largest value (see parity.metrics.compare_in_units); a cached decoder's outputs at the
positions its attention mask keeps (see parity.padding)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from attnopt.errors import first_line
from attnopt.parity.metrics import OutputMetrics, compare_in_units, failed_output
from attnopt.parity.padding import at_last_positions, cached_decoder_feeds, nonfinite_where_finite, unpadded
from attnopt.parity.tolerance import Tolerance
from attnopt.passes.graph_utils import initializer_bytes

#: above this a model goes to ONNX Runtime through a file with external data, not as bytes: packing the
#: weights into one protobuf is slow (bert-base's 440 MB: 4.4 s, and 3.8 s more for ONNX Runtime to read
#: the bytes), where external data is a plain copy (1.3 s, then 1.2 s for the session)
_IN_MEMORY_LIMIT = 50_000_000


def run_model(model: ir.Model | Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs per feed on ONNX Runtime CPU, graph optimizations off. A model already on disk is run from
    its file, not loaded and serialized again."""
    from attnopt.runtime import OrtRunner

    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, Path):
            source: Any = model
        elif not any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()) \
                and initializer_bytes(model) < _IN_MEMORY_LIMIT:
            source = ir.serde.serialize_model(model).SerializeToString()
        else:  # bytes cannot refer to external data files, nor exceed protobuf's 2 GB
            source = Path(tmp) / "model.onnx"
            ir.save(model, source, external_data="model.onnx.data")
        with OrtRunner(source, optimize=False) as runner:
            return [runner.infer({k: v for k, v in feed.items() if k in runner.input_names}) for feed in feeds]


@dataclass
class PassCheck:
    passed: bool
    outputs: list[OutputMetrics] = field(default_factory=list)

    def worst(self) -> str:
        bad = [o for o in self.outputs if not o.passed]
        return bad[0].reason if bad else ""


def check_against(reference: list[dict[str, np.ndarray]], model: ir.Model, feeds: list[dict[str, np.ndarray]],
                  tol: Tolerance) -> PassCheck:
    try:
        actual = run_model(model, feeds)
    except Exception as exc:  # noqa: BLE001 - any failure to run is a failed check
        first = first_line(exc)[:300] or type(exc).__name__
        outputs = [failed_output(n, e, f"onnxruntime failed: {first}") for n, e in reference[0].items()]
        return PassCheck(False, outputs)
    outputs = [_compare(name, got.get(name), want[name], feed, tol)
               for want, got, feed in zip(reference, actual, feeds) for name in want]
    return PassCheck(all(o.passed for o in outputs), outputs)


def _compare(name: str, actual: np.ndarray | None, expected: np.ndarray, feed: dict[str, np.ndarray],
             tol: Tolerance) -> OutputMetrics:
    """One output; a cached decoder's at the positions its mask keeps (parity.padding says why), its logits
    at the positions the model computes them."""
    decoder = cached_decoder_feeds(feed)
    if decoder:
        expected = at_last_positions(name, expected, actual, feed)
    if actual is None or actual.shape != expected.shape or not decoder:
        return compare_in_units(name, actual, expected, tol)
    if nonfinite_where_finite(actual, expected):
        return failed_output(name, expected, "NaN/Inf where the reference is finite")
    return compare_in_units(name, unpadded(actual, feed), unpadded(expected, feed), tol)
