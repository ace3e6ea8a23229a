"""model.attnopt.json: what a model file is, where it came from, and how it was verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".attnopt.json"


def sidecar_path(model_path: Path) -> Path:
    stem = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.name
    return model_path.with_name(stem + SIDECAR_SUFFIX)


def value_dims(value_info: Any) -> list[int | str | None]:
    """A graph value's dims: ints where static, the symbol's name where dynamic, None where unknown."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None))
    return dims


def graph_input_dims(model: Any) -> dict[str, list[int | str | None]]:
    """Dims of the graph's real inputs (initializers listed as inputs left out), in order."""
    inits = {i.name for i in model.graph.initializer}
    return {v.name: value_dims(v) for v in model.graph.input if v.name not in inits}


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes, shapes and dynamic axes of the graph's inputs and outputs, read from the file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(v: Any) -> dict[str, Any]:
        dims = value_dims(v)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        dynamic = {str(i): d for i, d in enumerate(dims) if isinstance(d, str) or d is None}
        return {"name": v.name, "dtype": dtype, "shape": dims, "dynamic_axes": dynamic}

    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output]}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for pkg in ("attnopt", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "onnxscript", "onnx-ir"):
        try:
            found[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return found


def write_sidecar(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def is_causal_lm(sidecar: dict[str, Any] | None) -> bool:
    """Whether the sidecar describes a causal language model (its logits are next-token distributions)."""
    return (sidecar or {}).get("task") == "causal-lm"


def read_sidecar(model_path: Path) -> dict[str, Any] | None:
    path = sidecar_path(model_path)
    return json.loads(path.read_text()) if path.is_file() else None
