"""Cleanup: constant folding, identity removal, dead nodes, shapes, order (onnx-ir's and onnxscript's passes)."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common


def infer_shapes(model: ir.Model) -> None:
    """Shape inference where onnx can do it (it cannot above 2 GB or on unknown contrib ops)."""
    try:
        common.ShapeInferencePass()(model)
    except Exception:  # noqa: BLE001 - shapes are a help to the matchers, never a requirement
        pass


def cleanup(model: ir.Model) -> ir.Model:
    import onnxscript.optimizer as optimizer

    optimizer.fold_constants(model)
    common.IdentityEliminationPass()(model)
    tidy(model)
    infer_shapes(model)
    return model


def tidy(model: ir.Model) -> None:
    _drop_noop_casts(model)
    # the per-layer mask and shape computations a lowering writes are identical across layers
    common.DeduplicateInitializersPass()(model)
    common.CommonSubexpressionEliminationPass()(model)
    common.RemoveUnusedNodesPass()(model)
    common.RemoveUnusedOpsetsPass()(model)
    common.TopologicalSortPass()(model)


def _drop_noop_casts(model: ir.Model) -> None:
    """A Cast to the type its input already has (TorchScript's .float() of a float hidden state, twice a
    layer) does nothing: its readers read the input, and it dies with the unused nodes."""
    for node in list(model.graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.outputs[0].is_graph_output():
            continue
        source, to = node.inputs[0], node.attributes.get_int("to", 0)
        if source is not None and source.dtype is not None and int(source.dtype) == to:
            node.outputs[0].replace_all_uses_with(source)
