"""Tolerance-driven mixed precision: convert, measure against fp32 on the calibration inputs, and hold in
fp32 only the nodes that break the tolerance: first those whose values leave the format's range (a scan
of the fp32 model's activations), then, while the tolerance still fails, the nodes bisection names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import numpy as np
import onnx_ir as ir

from attnopt.console import SILENT, Progress
from attnopt.parity.tolerance import Tolerance
from attnopt.passes.lower.common import MASK_FLOOR
from attnopt.passes.precision.accuracy import Accuracy, measure
from attnopt.passes.precision.cast import FINITE_MAX, REDUCED_TYPES, Conversion, convert
from attnopt.passes.verify import run_model

#: at most this many nodes are named by bisection before the search gives up and reports failure
MAX_BISECTIONS = 8
#: at or beyond this magnitude a value is a mask fill (fp32's lowest, or the fused ops' floor): softmax makes
#: it 0 beside any kept key, and a reduced format's own largest finite value masks as well
_FILL = abs(MASK_FLOOR)


@dataclass
class MixedResult:
    model: ir.Model
    conversion: Conversion
    accuracy: Accuracy
    passed: bool
    failure: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def activation_ranges(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Largest |value| of every float value of the fp32 model over the feeds (graph outputs included)."""
    probe = model.clone()
    names = {o.name for o in probe.graph.outputs}
    for node in probe.graph:
        for out in node.outputs:
            if out.dtype == ir.DataType.FLOAT and out.name not in names and out.uses():
                probe.graph.outputs.append(out)
                names.add(out.name)
    ranges: dict[str, float] = {}
    for outputs in run_model(probe, feeds):
        for name, array in outputs.items():
            if np.issubdtype(array.dtype, np.floating) and array.size:
                # mask fills: constants are clamped to the format's largest finite value, which masks as well;
                # one computed at run time becomes -inf, and a fully masked row's NaN then fails measure
                finite = array[np.isfinite(array) & (np.abs(array) < _FILL)]
                ranges[name] = max(ranges.get(name, 0.0), float(np.abs(finite).max()) if finite.size else 0.0)
    return ranges


def out_of_range(model: ir.Model, ranges: dict[str, float], limit: float, precision: str) -> dict[str, str]:
    keep = {}
    for node in model.graph:
        values = [v for v in (*node.inputs, *node.outputs) if v is not None and v.name in ranges]
        worst = max(values, key=lambda v: ranges[v.name], default=None)
        if worst is not None and ranges[worst.name] > limit:
            keep[node.name] = (f"values reach {ranges[worst.name]:.3g} at {worst.name}, beyond {precision}'s "
                               f"largest finite {limit:g}")
    return keep


def search(model: ir.Model, precision: str, feeds: list[dict[str, np.ndarray]], criteria: Tolerance,
           reference: list[dict[str, np.ndarray]], reduced_softmax: bool = False, keep_io_types: bool = True,
           evaluate: Callable[[ir.Model], list[dict[str, np.ndarray]]] | None = None,
           progress: Progress = SILENT, reduced_io: Collection[str] = ()) -> MixedResult:
    """Find a small set of fp32 nodes that makes the `precision` model meet `criteria` against `reference`."""
    evaluate = evaluate or (lambda m: run_model(m, feeds))
    steps: list[dict[str, Any]] = []

    def attempt(keep: dict[str, str], stage: str) -> tuple[ir.Model, Conversion, Accuracy, str]:
        candidate = model.clone()
        conversion = convert(candidate, precision, keep, keep_io_types, reduced_softmax, reduced_io)
        try:
            accuracy = measure(reference, evaluate(candidate), feeds)
        except Exception as exc:  # noqa: BLE001 - a model the runtime rejects is a failed attempt
            accuracy = Accuracy(finite=False)
            steps.append({"stage": stage, "kept": len(conversion.kept), "failure": f"runtime: {str(exc)[:200]}"})
            return candidate, conversion, accuracy, "the runtime failed"
        failure = accuracy.failure(criteria)
        steps.append({"stage": stage, "kept": len(conversion.kept), "failure": failure, **accuracy.to_dict()})
        return candidate, conversion, accuracy, failure

    with progress.step(f"Converting to {precision} and measuring"):
        result = attempt({}, "policy")
    if not result[3]:
        return MixedResult(*result[:3], True, "", steps)
    keep: dict[str, str] = {}
    limit = FINITE_MAX.get(REDUCED_TYPES[precision])
    if limit is not None:
        with progress.step("Scanning activation ranges"):
            keep.update(out_of_range(model, activation_ranges(model, feeds), limit, precision))
        if keep:
            result = attempt(keep, "range scan")
    with progress.step("Bisecting for nodes that break the tolerance"):
        for _ in range(MAX_BISECTIONS):
            if not result[3]:
                break
            culprit = _first_breaking(model, precision, keep, result[1], attempt)
            if culprit is None:
                break
            keep[culprit] = f"reduced precision here breaks the tolerance ({result[3]}; found by bisection)"
            progress.debug(f"bisection: {culprit} kept in fp32")
            result = attempt(keep, f"bisection: {culprit}")
    return MixedResult(*result[:3], not result[3], result[3], steps)


def _first_breaking(model: ir.Model, precision: str, keep: dict[str, str], conversion: Conversion,
                    attempt: Callable) -> str | None:
    """The first reduced node (in graph order) such that reducing it and all before it breaks the
    tolerance while reducing only those before it does not."""
    order = [n for n in conversion.reduced if n not in keep and not n.endswith("/cast_output")]
    low, high = 0, len(order)  # invariant: prefix `low` holds, prefix `high` breaks
    while high - low > 1:
        middle = (low + high) // 2
        trial = dict(keep, **{name: "bisection" for name in order[middle:]})
        if attempt(trial, f"bisection probe {middle}/{len(order)}")[3]:
            high = middle
        else:
            low = middle
    return order[high - 1] if order else None
