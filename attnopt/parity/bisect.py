"""`--bisect`: run a failing artifact and its reference ONNX with every shared intermediate tensor
exposed (the names the passes keep), and name the first node, in the artifact's order, whose output
leaves tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnopt.parity.artifacts import Artifact
from attnopt.parity.metrics import compare
from attnopt.parity.tolerance import default_tolerance


def _reference_for(artifact: Artifact, opened: list[Artifact], failing: set[str]) -> Path | None:
    from attnopt.exporter.sidecar import read_sidecar

    source = ((read_sidecar(artifact.path) or {}).get("optimization") or {}).get("source")
    if source and Path(source).is_file() and Path(source).resolve() != artifact.path.resolve():
        return Path(source)
    for other in opened:
        if other.path != artifact.path and str(other.path) not in failing and other.kind == "onnx":
            return other.path
    return None


def _exposed(path: Path) -> tuple[bytes, list[str], list[str]]:
    """The model with every float node output also a graph output; its node order and output names."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    existing = {o.name for o in model.graph.output}
    order: list[str] = []
    for node in model.graph.node:
        for name in node.output:
            if name and types.get(name) == onnx.TensorProto.FLOAT:
                order.append(name)
                if name not in existing:
                    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    producers = {o: n.name or n.op_type for n in model.graph.node for o in n.output}
    ops = {o: n.op_type for n in model.graph.node for o in n.output}
    return model.SerializeToString(), order, [f"{producers[n]} ({ops[n]})" for n in order]


def _run(blob: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from attnopt.runtime import OrtRunner

    with OrtRunner(blob, optimize=False) as runner:
        return runner.infer({k: v for k, v in feeds.items() if k in runner.input_names})


def bisect_one(artifact: Artifact, reference: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    ref_blob, ref_order, _ = _exposed(reference)
    art_blob, art_order, art_nodes = _exposed(artifact.path)
    shared = set(ref_order) & set(art_order)
    want, got = _run(ref_blob, feeds), _run(art_blob, feeds)
    tolerance = default_tolerance(artifact.precision)
    for name, node in zip(art_order, art_nodes):
        if name not in shared or name not in want or name not in got:
            continue
        metrics = compare(name, got[name], want[name], tolerance)
        if not metrics.passed and metrics.reason != "both outputs are all zeros":
            return {"reference": str(reference), "node": node, "tensor": name, "max_abs": metrics.max_abs,
                    "message": f"first diverging node {node}, tensor {name}: {metrics.reason} "
                               f"(against {reference.name}; {len(shared)} shared tensors compared)"}
    return {"reference": str(reference), "node": None,
            "message": f"no shared intermediate tensor leaves tolerance ({len(shared)} compared against "
                       f"{reference.name}); the divergence is inside a fused op or in a graph output"}


def bisect_failures(result: Any, opened: list[Artifact], sets: list) -> dict[str, dict[str, Any]]:
    failing = {c.artifact for c in result.failures}
    found = {}
    for artifact in opened:
        if str(artifact.path) not in failing or artifact.kind != "onnx":
            continue
        label = next(c.inputs for c in result.failures if c.artifact == str(artifact.path))
        feeds = dict(sets)[label]
        reference = _reference_for(artifact, opened, failing)
        if reference is None:
            found[str(artifact.path)] = {"node": None, "message": "no reference ONNX to bisect against: give the "
                                         "export before the failing artifact"}
            continue
        found[str(artifact.path)] = bisect_one(artifact, reference, feeds)
    return found
