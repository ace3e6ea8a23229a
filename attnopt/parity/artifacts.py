"""What an artifact is (ONNX model or TensorRT engine), its precision, and a runner for it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnopt.errors import AttnoptError, MissingDependencyError
from attnopt.exporter.sidecar import graph_input_dims, read_sidecar
from attnopt.runtime.onnxruntime import ort_providers  # noqa: F401 - check's import, until it passes a device
from attnopt.runtime.select import ENGINE_SUFFIXES, runner_for as _runner_for

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
              "DynamicQuantizeMatMul", "QAttention"}
#: weight-only quantization by MatMulNBits' bits
_WEIGHT_ONLY = {4: "int4", 8: "int8-weights"}


@dataclass
class Artifact:
    path: Path
    kind: str  # onnx | tensorrt
    precision: str  # fp32 | fp16 | bf16 | int8
    inputs: dict[str, list]  # declared input dims (ints, or names for dynamic axes)


def precision_of(model: Any, sidecar: dict | None) -> str:
    """Read from the sidecar where the precision pass wrote it, else from the graph itself. `model` is an
    onnx ModelProto or an onnx-ir Model (read in place: no copy of the weights either way)."""
    if sidecar and sidecar.get("precision"):
        return str(sidecar["precision"])
    if hasattr(model, "graph") and hasattr(model.graph, "initializers"):  # onnx-ir
        ops = Counter(n.op_type for n in model.graph)
        types = Counter(v.dtype.name for v in model.graph.initializers.values() if v.dtype is not None)
        bits = [n.attributes["bits"].value for n in model.graph if n.op_type == "MatMulNBits" and "bits" in n.attributes]
    else:
        from onnx import TensorProto

        ops = Counter(n.op_type for n in model.graph.node)
        types = Counter(TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)
        bits = [a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"]
    if any(ops[o] for o in _QUANT_OPS):
        return "int8"
    if ops["MatMulNBits"]:  # the narrowest weights set the tolerance
        return _WEIGHT_ONLY.get(min(bits or [4]), "int4")
    if types["BFLOAT16"] > types["FLOAT"]:
        return "bf16"
    if types["FLOAT16"] > types["FLOAT"]:
        return "fp16"
    return "fp32"


def open_artifact(path: Path) -> Artifact:
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file")
    if path.suffix in ENGINE_SUFFIXES:
        from attnopt.engine.environment import TENSORRT_INSTALL, tensorrt_unavailable

        reason = tensorrt_unavailable()
        if reason:
            raise MissingDependencyError(f"{path} is a TensorRT engine and {reason}", TENSORRT_INSTALL)
        from attnopt.engine.sidecar import read_engine_sidecar

        record = read_engine_sidecar(path)
        inputs = {name: [None] * len(p["opt"]) for name, p in record.get("profiles", {}).items()}
        precision = record.get("precision", "graph")
        if precision == "graph":  # strongly typed: the precision of the ONNX it was built from
            onnx_path = Path(record.get("onnx", ""))
            precision = open_artifact(onnx_path).precision if onnx_path.is_file() else "fp32"
        return Artifact(path, "tensorrt", precision, inputs)
    if path.suffix != ".onnx":
        raise AttnoptError(f"{path}: unknown artifact type {path.suffix or '(no suffix)'}",
                           "give .onnx models or TensorRT engines (.engine, .plan)")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise AttnoptError(f"{path} is not a readable ONNX model") from exc
    return Artifact(path, "onnx", precision_of(model, read_sidecar(path)), graph_input_dims(model))


def runner_for(artifact: Artifact, providers: list[Any] | None = None) -> Any:
    """A parity runner (exact numerics: denormals kept) through attnopt.runtime.runner_for, the one place
    runners are chosen; `providers` (from ort_providers) only says the device."""
    names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
    device = "cuda" if "CUDAExecutionProvider" in names else "cpu"
    return _runner_for(artifact.path, device if artifact.kind == "onnx" else "cuda")
