"""int8 through onnxruntime.quantization's quantizers and calibrators; attnopt owns which nodes are
quantized and how the graph is prepared for them.

dynamic: int8 weights, activations quantized at run time (ONNX Runtime's fast CPU path: MatMulInteger,
DynamicQuantizeMatMul, QAttention). static: QuantizeLinear/DequantizeLinear pairs from calibration,
symmetric int8 with per-channel weights, on MatMul/Gemm inputs, both attention matmuls included where
attention is written as MatMul-Softmax-MatMul: what TensorRT's explicit quantization takes."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx_ir as ir

from attnopt.errors import AttnoptError
from attnopt.passes.feeds import make_feeds
from attnopt.passes.graph_utils import MS_DOMAIN, add_constant, const_array, new_node
from attnopt.passes.verify import run_model

METHODS = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: a bias at or below this where the mask is 0 is a mask (ONNX Runtime's own mask fill is -10000)
_MASKED = -1e4


@dataclass
class Layer:
    """A node int8 can be applied to."""

    name: str
    op: str
    kind: str  # linear | attention | attention-matmul | embedding

    def to_dict(self) -> dict[str, str]:
        return {"node": self.name, "op": self.op, "kind": self.kind}


def layers(model: ir.Model, method: str) -> list[Layer]:
    """Quantizable nodes in graph order: matmuls with constant 2-D weights (both methods), ONNX Runtime's
    Attention and embedding tables (dynamic), and matmuls of two activations, the attention matmuls
    (static)."""
    found = []
    for node in model.graph:
        if node.domain in ("", "ai.onnx") and node.op_type in ("MatMul", "Gemm"):
            weight = const_array(node.inputs[1])
            if weight is not None and weight.ndim == 2 and weight.dtype == np.float32:
                found.append(Layer(node.name, node.op_type, "linear"))
            elif method == "static" and weight is None and node.op_type == "MatMul":
                found.append(Layer(node.name, node.op_type, "attention-matmul"))
        elif method == "dynamic" and node.domain in ("", "ai.onnx") and node.op_type == "Gather" \
                and _is_table(const_array(node.inputs[0])):
            found.append(Layer(node.name, node.op_type, "embedding"))
        elif method == "dynamic" and node.domain == MS_DOMAIN and node.op_type == "Attention" \
                and const_array(node.inputs[1]) is not None:
            found.append(Layer(node.name, node.op_type, "attention"))
    return found


def _is_table(array: np.ndarray | None) -> bool:
    """An embedding table: 2-D float32, worth storing in int8 (the tables, not small shape constants)."""
    return array is not None and array.ndim == 2 and array.dtype == np.float32 and array.size >= 4096


def _mask_input(model: ir.Model) -> ir.Value | None:
    return next((v for v in model.graph.inputs if v.name == "attention_mask" and v.shape is not None
                 and len(v.shape) == 2), None)


def _mask_kinds(model: ir.Model, biases: list[ir.Value], mask: ir.Value | None,
                specs: list[dict[str, Any]]) -> dict[str, str | None]:
    """What each bias is, proved in one run of the graph on masks with random holes at two shapes:
    'none' (all zeros: a mask that keeps everything), 'padding' (0 where attention_mask keeps a key, a
    mask fill where it drops one, for every head and query), 'causal' (the same, and also a fill for
    keys after the query), or None (anything else). Keyed by the bias's name."""
    names = {b.name for b in biases}
    probe = model.clone()
    probe.graph.outputs.extend(v for n in probe.graph for v in n.outputs if v.name in names)
    rng = np.random.default_rng(7)
    feeds = []
    for i, (batch, seq) in enumerate(((2, 16), (3, 29))):
        feed = make_feeds(specs, batch, seq, seed=i)
        if mask is not None:
            holes = rng.random((batch, seq)) < 0.3
            holes[:, 0] = False
            feed[mask.name] = (~holes).astype(feed[mask.name].dtype)
        feeds.append(feed)
    try:
        results = run_model(probe, feeds)
    except Exception:  # noqa: BLE001 - an unprovable bias is simply not rewritten
        return dict.fromkeys(names)
    kinds = {name: {"none", "padding", "causal"} if mask is not None else {"none"} for name in names}
    for feed, outputs in zip(feeds, results):
        for name in names:
            _rule_out(outputs[name], feed[mask.name].astype(bool) if mask is not None else None, kinds[name])
    return {name: next((k for k in ("none", "padding", "causal") if k in kinds[name]), None) for name in names}


def _rule_out(bias: np.ndarray, keep: np.ndarray | None, kinds: set[str]) -> None:
    """Drop from `kinds` every kind this bias, computed for the key mask `keep`, is not."""
    if np.any(bias != 0):
        kinds.discard("none")
    if keep is None:
        return
    batch, seq = keep.shape
    if bias.ndim != 4 or bias.shape[-1] != seq or bias.shape[0] not in (1, batch) or bias.shape[1] != 1:
        kinds -= {"padding", "causal"}
        return
    full = np.broadcast_to(bias, (batch, 1, seq, seq))
    padding = np.broadcast_to(keep[:, None, None, :], full.shape)
    causal = padding & np.tril(np.ones((seq, seq), dtype=bool))[None, None]
    for kind, kept in (("padding", padding), ("causal", causal)):
        if not (np.all(full[kept] == 0) and np.all(full[~kept] <= _MASKED)):
            kinds.discard(kind)


def prepare_dynamic(model: ir.Model, specs: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """Rewrites ONNX Runtime Attention nodes whose attention_bias is a key padding mask (or that and a
    causal mask) to take the 2-D mask as mask_index instead (with unidirectional=1 for causal): QAttention
    has no attention_bias input, and onnxruntime's quantizer drops it silently (padding then gets
    attended). Returns the nodes that must stay fp32 and notes."""
    exclude: dict[str, str] = {}
    notes: list[str] = []
    mask = _mask_input(model)
    mask_index: ir.Value | None = None
    rewritten: dict[str, int] = {}
    attentions = [n for n in model.graph if n.domain == MS_DOMAIN and n.op_type == "Attention"
                  and len(n.inputs) > 5 and n.inputs[5] is not None]
    provable = [n.inputs[5] for n in attentions if n.inputs[3] is None]
    kinds = _mask_kinds(model, provable, mask, specs) if provable else {}
    for node in attentions:
        kind = kinds.get(node.inputs[5].name) if node.inputs[3] is None else None
        if kind == "none":  # the bias adds nothing: drop it
            node.replace_input_with(5, None)
            rewritten[kind] = rewritten.get(kind, 0) + 1
        elif kind is not None:
            if mask_index is None:
                first = model.graph.node(0)
                mask_index = new_node(model.graph, first, "Cast", [mask], {"to": ir.DataType.INT32},
                                      name="mask_index").outputs[0]
            node.replace_input_with(3, mask_index)
            node.replace_input_with(5, None)
            if kind == "causal":
                node.attributes["unidirectional"] = ir.AttrInt64("unidirectional", 1)
            rewritten[kind] = rewritten.get(kind, 0) + 1
        else:
            exclude[node.name] = ("its attention_bias is neither a key padding mask nor a causal one, and "
                                  "QAttention has no attention_bias input")
    dropped = rewritten.pop("none", 0)
    if dropped:
        notes.append(f"{dropped} Attention node(s) had an attention_bias proved all zeros (nothing is masked): "
                     "dropped, so QAttention can take them")
    for kind, count in sorted(rewritten.items()):
        how = "as mask_index" + (" with unidirectional=1" if kind == "causal" else "")
        notes.append(f"{count} Attention node(s) take attention_mask {how} (proved equal to their {kind} "
                     "attention_bias), so QAttention keeps the mask")
    _gemm_to_matmul(model, notes)
    return exclude, notes


def _gemm_to_matmul(model: ir.Model, notes: list[str]) -> None:
    """Gemm(x, W, b) with a constant W as MatMul + Add: ONNX Runtime quantizes MatMul dynamically, not Gemm."""
    count = 0
    for node in list(model.graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            continue
        weight = const_array(node.inputs[1])
        attrs = {k: a.value for k, a in node.attributes.items()}
        if weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        w = add_constant(model.graph, weight, f"{node.name}_weight")
        out = new_node(model.graph, node, "MatMul", [node.inputs[0], w], name="matmul").outputs[0]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            out = new_node(model.graph, node, "Add", [out, node.inputs[2]], name="bias").outputs[0]
        out.name = node.outputs[0].name if not node.outputs[0].is_graph_output() else out.name
        out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
        node.outputs[0].replace_all_uses_with(out, replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        count += 1
    if count:
        notes.append(f"{count} Gemm node(s) written as MatMul + Add for dynamic int8")


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs a pre-processing suggestion on every call, on the root logger: raise
    its level for the call only, and give the caller's logging back as it was."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


DYNAMIC_OP_TYPES = ["MatMul", "Attention", "Gather"]
DYNAMIC_OPTIONS = {"MatMulConstBOnly": True}


class DynamicQuantizer:
    """One model quantized dynamically for many node subsets, as the accuracy-aware search does (a trial per
    subset; the caller keeps the quantizer for its search, so nothing outlives it): each call writes the file
    onnxruntime's quantize_dynamic writes, byte for byte, but that function shape-infers the whole model twice
    per call (saving and reloading every weight) and quantizes each weight channel by channel in Python. Here the
    model is inferred once and each weight is quantized once."""

    def __init__(self, source: Path):
        import onnx
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.onnx_model import ONNXModel
        from onnxruntime.quantization.quant_utils import (load_model_with_shape_infer,
                                                          save_and_reload_model_with_shape_infer,
                                                          update_opset_version)

        # what quantize_dynamic and ONNXQuantizer do to the model before quantizing, done once
        with quiet_quantizer():
            model = update_opset_version(load_model_with_shape_infer(Path(source)), QuantType.QInt8)
            ONNXModel(model).replace_gemm_with_matmul()
            self.model: onnx.ModelProto = save_and_reload_model_with_shape_infer(model)
        #: each per-channel weight's quantized initializers, keyed by quantize_weight_per_channel_impl's arguments
        self.channel_weights: dict[tuple, tuple[list[onnx.TensorProto], tuple[str, str, str]]] = {}

    def quantize(self, output: Path, nodes: list[str], per_channel: bool = True) -> None:
        import onnx
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
        from onnxruntime.quantization.quant_utils import QuantizationMode

        memo = self.channel_weights

        class Quantizer(ONNXQuantizer):
            def quantize_weight_per_channel_impl(self, weight_name, *args, **kwargs):
                key = (weight_name, *args, *sorted(kwargs.items()))
                if key not in memo:
                    before = len(self.model.initializer())
                    names = super().quantize_weight_per_channel_impl(weight_name, *args, **kwargs)
                    memo[key] = ([onnx.TensorProto.FromString(t.SerializeToString())
                                  for t in self.model.initializer()[before:]], names)
                else:
                    self.model.initializer_extend(memo[key][0])
                return memo[key][1]

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        # static=True only skips the Gemm rewrite and second shape inference of ONNXQuantizer.__init__, both
        # done once in __init__ above; quantization itself is dynamic
        quantizer = Quantizer(model, per_channel, False, QuantizationMode.IntegerOps, True, QuantType.QInt8,
                              QuantType.QUInt8, None, nodes, [], DYNAMIC_OP_TYPES, dict(DYNAMIC_OPTIONS))
        quantizer.static = False
        with quiet_quantizer():
            quantizer.quantize_model()
        quantizer.model.save_model_to_file(output)


class _Reader:
    """onnxruntime's CalibrationDataReader over attnopt's calibration feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = self.feeds[start_index:end_index]


def uniform_batches(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """onnxruntime's histogram calibrators (percentile, entropy) stack every batch: they need one shape.
    Token inputs (batch, seq) are split into single rows right-padded with zeros (mask 0) to one length."""
    if len({tuple((k, v.shape) for k, v in sorted(f.items())) for f in feeds}) <= 1:
        return feeds
    if not all(v.ndim == 2 and np.issubdtype(v.dtype, np.integer) for f in feeds for v in f.values()):
        raise AttnoptError("percentile and entropy calibration need calibration inputs of one shape",
                           "use --calibration-method minmax, or an .npz of one batch")
    length = max(v.shape[1] for f in feeds for v in f.values())
    rows = []
    for feed in feeds:
        for i in range(next(iter(feed.values())).shape[0]):
            rows.append({k: np.pad(v[i:i + 1], ((0, 0), (0, length - v.shape[1]))) for k, v in feed.items()})
    return rows


def quantize_static(source: Path, output: Path, nodes: list[str], feeds: list[dict[str, np.ndarray]],
                    calibration: str, cache: Path) -> None:
    """Q/DQ with symmetric int8 activations (zero point 0) and per-channel weights along the output
    axis; biases stay float (TensorRT's explicit quantization fuses them itself). `cache` keeps the
    calibrated ranges, so quantizing other node subsets does not calibrate again."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if calibration not in CALIBRATION_METHODS:
        raise AttnoptError(f"unknown calibration method {calibration!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    with quiet_quantizer():
        ort_quantize_static(
            source, output, _Reader(uniform_batches(feeds) if calibration != "minmax" else feeds)
            if not cache.is_file() else None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            calibration_cache_path=cache,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "CalibPercentile": 99.99})
