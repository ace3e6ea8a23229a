"""Which opset to export at by default."""

from __future__ import annotations

from functools import lru_cache

MIN_OPSET = 18
#: the default is capped here. At opset 23 torch's dynamo exporter writes ONNX RotaryEmbedding with
#: batch-1 cos/sin caches, which onnxruntime 1.32 rejects for batch > 1 (seen on llama-tiny); opset 23
#: stays available with --opset 23, and the fusion passes write the opset-23 ops themselves.
DEFAULT_MAX_OPSET = 22
#: the TorchScript exporter stops here
TORCHSCRIPT_MAX_OPSET = 20


@lru_cache(maxsize=1)
def onnxruntime_max_opset() -> int:
    """The newest default-domain opset the installed onnxruntime loads, found by asking it."""
    import onnx
    from onnx import TensorProto, helper

    from attnopt.runtime.onnxruntime import ort_module, session_options

    ort = ort_module()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    options = session_options(log_level=4)
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - an unknown opset is reported as a generic failure
            continue
    return MIN_OPSET


def default_opset() -> int:
    return max(MIN_OPSET, min(onnxruntime_max_opset(), DEFAULT_MAX_OPSET))
