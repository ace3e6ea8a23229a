"""Post-export verification: ONNX checker with shape inference, then ONNX Runtime against PyTorch
at two different shapes, so a shape baked into the graph is caught."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnopt.errors import first_line
from attnopt.models.loaded import LoadedModel
from attnopt.parity.metrics import OutputMetrics, compare, failed_output
from attnopt.parity.tolerance import Tolerance


@dataclass
class ShapeResult:
    batch: int
    seq: int
    outputs: list[OutputMetrics]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class Verification:
    tolerance: Tolerance
    shapes: list[ShapeResult] = field(default_factory=list)
    checker: str = "passed"

    @property
    def passed(self) -> bool:
        return self.checker == "passed" and bool(self.shapes) and all(s.passed for s in self.shapes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checker": self.checker,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "shapes": [
                {"batch": s.batch, "seq": s.seq, "passed": s.passed, "outputs": [o.to_dict() for o in s.outputs]}
                for s in self.shapes
            ],
        }


def verification_shapes(loaded: LoadedModel, batch: int, seq: int, dynamic: bool) -> list[tuple[int, int]]:
    """The export shape, and a second one that moves every dynamic axis."""
    if not dynamic:
        return [(batch, seq)]
    axes = {name for spec in loaded.inputs for name in spec.dynamic_axes.values()}
    second = (batch + 1 if "batch" in axes else batch, seq * 2 if "seq" in axes else seq)
    return [(batch, seq), second] if second != (batch, seq) else [(batch, seq)]


def run_checker(path: Path) -> str:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker and shape inference errors have several types
        return f"failed: {first_line(exc)}"
    return "passed"


def verify_export(loaded: LoadedModel, path: Path, shapes: list[tuple[int, int]], tol: Tolerance,
                  seed: int = 0) -> Verification:
    from attnopt.runtime import OrtRunner, TorchRunner

    result = Verification(tol, checker=run_checker(path))
    reference = TorchRunner(loaded.module, loaded.input_names, loaded.output_names)
    with OrtRunner(path) as ort_runner, reference:
        for i, (batch, seq) in enumerate(shapes):
            feed = {k: v.numpy() for k, v in loaded.make_inputs(batch, seq, seed=seed + i).items()}
            expected = reference.infer(feed)
            try:
                actual = ort_runner.infer({k: v for k, v in feed.items() if k in ort_runner.input_names})
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types; all are a failure
                reason = f"onnxruntime failed: {first_line(exc)[:300]}"
                outputs = [failed_output(name, expected[name], reason) for name in loaded.output_names]
                result.shapes.append(ShapeResult(batch, seq, outputs))
                continue
            outputs = [compare(name, actual.get(name), expected[name], tol) for name in loaded.output_names]
            result.shapes.append(ShapeResult(batch, seq, outputs))
    return result
