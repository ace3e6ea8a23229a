"""How `build --precision` is honoured: from the graph's own types (strongly typed, the only way on
TensorRT 11), or through TensorRT 10's builder flags. Decided from the operator table before TensorRT is
touched, so a request TensorRT 11 cannot take fails with the command that makes the graph it needs."""

from __future__ import annotations

from pathlib import Path

from attnopt.engine.optable import OperatorTable
from attnopt.errors import AttnoptError

PRECISIONS = ("graph", "fp16", "int8")


def quantize_command(source: Path, precision: str) -> tuple[Path, str]:
    """The attnopt quantize run that writes `source` in `precision` (for a trt model, int8 is static Q/DQ:
    TensorRT's explicit quantization)."""
    out = source.with_name(f"{source.stem}.{precision}.onnx")
    return out, f"attnopt quantize {source} -o {out} --precision {precision}"


def builder_precision(requested: str, graph_precision: str, table: OperatorTable, source: Path) -> str:
    """'graph' to build the network as its types say, or 'fp16'/'int8' for TensorRT 10's builder flag.

    graph_precision is what the model already is (fp32 | fp16 | bf16 | int8, from its sidecar or graph)."""
    if requested not in PRECISIONS:
        raise AttnoptError(f"unknown precision {requested!r}", f"choose one of {', '.join(PRECISIONS)}")
    if requested == "graph" or requested == graph_precision:
        return "graph"
    if table.strongly_typed_only:
        out, command = quantize_command(source, requested)
        raise AttnoptError(f"TensorRT {table.major} builds strongly typed networks only, so --precision {requested} "
                           f"cannot be a builder flag there and {source.name} is {graph_precision}",
                           f"run `{command}`, then `attnopt build {out} -o ENGINE`")
    return requested
