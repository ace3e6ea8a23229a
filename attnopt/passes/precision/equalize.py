"""Activation-aware scaling before weight-only quantization (AWQ's idea, folded into the graph): where a
tensor's channel i can be divided by s_i for free (a norm's output, through its scale and bias, fused or as
exported; a gated MLP's act(gate) * up, through up's weight columns) and only weight MatMuls read it, it is,
and their weight rows i are multiplied by s_i. In fp32 nothing changes; quantized, the channels that carry
large activations get finer weight blocks, and the activations the CPU kernel quantizes to int8 per block
(accuracy level 4) are flatter. s = rms(x)^alpha per channel, alpha chosen per site from a grid by the
quantized product's error on the calibration activations, weight and activation rounding both emulated: round
to nearest's, so with gptq or mse (which round otherwise) the alpha is a proxy, chosen for weights those
algorithms then refit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from attnopt.passes.graph_utils import add_constant

#: the norm's scale input by op: (gamma, beta or None)
#: (SkipSimplifiedLayerNormalization's input 3 is a bias added before the norm, not after: never divided)
NORM_SCALES = {"SimplifiedLayerNormalization": (1, None), "SkipSimplifiedLayerNormalization": (2, None),
               "LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3), "RMSNormalization": (1, None)}
#: alphas tried; 0 is no scaling, so a site never ends worse than unscaled by its own measure
ALPHAS = np.linspace(0.0, 1.0, 9)
#: calibration rows (tokens) a site's error is measured on
MAX_ROWS = 1024


@dataclass
class Site:
    """A tensor `activation` whose channels (last axis) can be divided by s exactly by dividing `divided`
    (node, input index: constants whose last axis is those channels), read by nothing but the weight MatMuls
    `readers`."""

    activation: str
    divided: list[tuple[ir.Node, int]]
    readers: list[ir.Node]
    #: what scales the channels down, for the report
    source: str


def _initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _float_initializer(value: ir.Value | None) -> bool:
    return _initializer(value) and value.dtype == ir.DataType.FLOAT


def _own_float_initializer(value: ir.Value | None) -> bool:
    return _float_initializer(value) and len(value.uses()) == 1


def _weight_readers(output: ir.Value, weight_matmuls: set[str]) -> list[ir.Node] | None:
    """The MatMuls reading `output`, when each is one of `weight_matmuls` reading it as its input and an initializer
    of its own as its weight, and nothing else reads it but Shape and Size (TorchScript's size reads, which
    scaling leaves as they were)."""
    readers = [use.node for use in output.uses() if use.node.op_type not in ("Shape", "Size")]
    if not readers or output.is_graph_output() or any(
            r.op_type != "MatMul" or r.name not in weight_matmuls or r.inputs[0] is not output
            or not _own_float_initializer(r.inputs[1]) for r in readers):
        return None
    return readers


def _norm_site(node: ir.Node, weight_matmuls: set[str]) -> Site | None:
    """A norm's output 0: its scale (and bias) divided."""
    gamma_at, beta_at = NORM_SCALES[node.op_type]
    params = [gamma_at]
    if beta_at is not None and len(node.inputs) > beta_at and node.inputs[beta_at] is not None:
        params.append(beta_at)
    readers = _weight_readers(node.outputs[0], weight_matmuls)
    if readers is None or not all(_float_initializer(node.inputs[i]) for i in params):
        return None
    return Site(node.outputs[0].name, [(node, i) for i in params], readers, node.name)


def _product_site(node: ir.Node, weight_matmuls: set[str]) -> Site | None:
    """A Mul: by a constant per-channel vector of its own (an exported norm's scale), that vector divided; else
    a gated MLP's act(gate) * up, up's weight columns divided (the product is linear in up)."""
    readers = _weight_readers(node.outputs[0], weight_matmuls)
    if readers is None:
        return None
    for i, side in enumerate(node.inputs):
        if _float_initializer(side) and side.shape is not None and len(side.shape) >= 1 \
                and all(d == 1 for d in side.shape[:-1]) and side.shape[-1] != 1:
            return Site(node.outputs[0].name, [(node, i)], readers, node.name)
    for side in node.inputs:
        up = side.producer() if side is not None else None
        if up is not None and up.op_type == "MatMul" and up.name in weight_matmuls and len(side.uses()) == 1 \
                and not side.is_graph_output() and _own_float_initializer(up.inputs[1]) \
                and node.inputs[0] is not node.inputs[1] \
                and all(up.inputs[1].shape[-1] == r.inputs[1].shape[0] for r in readers):  # no broadcast up
            return Site(node.outputs[0].name, [(up, 1)], readers, up.name)
    return None


def scaling_sites(model: ir.Model, weight_matmuls: set[str]) -> list[Site]:
    """Where scaling is exact and free: a norm's output (fp32 scale and bias of its own; as exported, the Mul by
    its scale), and a gated MLP's product whose linear side is a projection of `weight_matmuls`, each read by
    nothing but MatMuls of `weight_matmuls` with weights of their own."""
    sites = []
    for node in model.graph:
        site = None
        if node.domain in ("", "ai.onnx", "com.microsoft") and node.op_type in NORM_SCALES:
            site = _norm_site(node, weight_matmuls)
        elif node.domain in ("", "ai.onnx") and node.op_type == "Mul" and len(node.inputs) == 2:
            site = _product_site(node, weight_matmuls)
        if site is not None:
            sites.append(site)
    return sites


def collect_activations(model_path: Path, tensors: list[str], feeds: list[dict[str, np.ndarray]],
                        max_rows: int = MAX_ROWS) -> dict[str, np.ndarray]:
    """Rows (tokens) of each tensor over the calibration feeds, padding left out, at most `max_rows` evenly
    spread: name -> [rows, K] fp32."""
    from attnopt.passes.precision.calibration import activation_rows

    parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for rows_of in activation_rows(model_path, tensors, feeds):
        for tensor, rows in rows_of.items():
            parts[tensor].append(rows)
    gathered = {}
    for tensor, chunks in parts.items():
        every = np.concatenate(chunks)
        gathered[tensor] = every[np.linspace(0, len(every) - 1, min(max_rows, len(every))).astype(int)]
    return gathered


def round_blocks(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """A [K, N] weight rounded to nearest in MatMulNBits' blocks along K, dequantized: symmetric puts the
    block's largest magnitude on the wider side (-2^(bits-1)), asymmetric spans [min, max] with 0 inside."""
    k, n = weight.shape
    w = weight.reshape(k // block_size, block_size, n)
    top = (1 << bits) - 1
    if symmetric:
        extreme = np.take_along_axis(w, np.abs(w).argmax(axis=1)[:, None, :], axis=1)
        scale = extreme / -(1 << (bits - 1))
        scale = np.where(scale == 0, 1.0, scale)
        zero = float(1 << (bits - 1))
        q = np.clip(np.rint(w / scale) + zero, 0, top)
        return ((q - zero) * scale).reshape(k, n)
    low, high = np.minimum(w.min(axis=1, keepdims=True), 0), np.maximum(w.max(axis=1, keepdims=True), 0)
    scale = (high - low) / top
    scale = np.where(scale == 0, 1.0, scale)
    zero = np.clip(np.rint(-low / scale), 0, top)
    q = np.clip(np.rint(w / scale) + zero, 0, top)
    return ((q - zero) * scale).reshape(k, n)


def round_activations(x: np.ndarray, block_size: int) -> np.ndarray:
    """Activations [rows, K] as accuracy level 4 quantizes them: int8, symmetric, one scale per row and block."""
    rows, k = x.shape
    blocks = x.reshape(rows, k // block_size, block_size)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / 127
    scale = np.where(scale == 0, 1.0, scale)
    return (np.rint(blocks / scale) * scale).reshape(rows, k)


def choose_scales(x: np.ndarray, weight: np.ndarray, bits: int, block_size: int, symmetric: bool,
                  int8_activations: bool) -> tuple[float, np.ndarray, float, float]:
    """(alpha, s [K], error at alpha, error unscaled): the grid's alpha whose s = rms(x)^alpha (normalised to
    a geometric mean of 1) gives the least squared error of the quantized product over the rows of `x`; errors
    relative to the fp32 product's energy."""
    reference = x @ weight
    energy = float((reference ** 2).sum()) or 1.0
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=0)).astype(np.float32)
    rms = np.maximum(rms, rms.max() * 1e-4 + 1e-12)
    best = (0.0, np.ones_like(rms), np.inf)
    unscaled = np.inf
    for alpha in ALPHAS:
        s = rms ** alpha
        s = s / np.exp(np.log(s).mean())
        xs = x / s
        if int8_activations:
            xs = round_activations(xs, block_size)
        error = float(((xs @ round_blocks(weight * s[:, None], bits, block_size, symmetric) - reference) ** 2).sum())
        if alpha == 0:
            unscaled = error
        if error < best[2]:
            best = (float(alpha), s, error)
    return best[0], best[1], best[2] / energy, unscaled / energy


def apply_scales(site: Site, s: np.ndarray) -> None:
    """The activation's channels divided by s (through `divided`; a constant other nodes read too, such as the
    norm scales an exporter stored once for all layers, is copied for this one), every reader's weight rows
    multiplied by s."""
    for node, i in site.divided:
        value = node.inputs[i]
        divided = (value.const_value.numpy() / s).astype(np.float32)
        if len(value.uses()) == 1:
            value.const_value = ir.tensor(divided, name=value.name)
        else:
            node.replace_input_with(i, add_constant(node.graph, divided, f"{value.name}_scaled"))
    for matmul in site.readers:
        value = matmul.inputs[1]
        value.const_value = ir.tensor((value.const_value.numpy() * s[:, None]).astype(np.float32), name=value.name)


def equalize_inputs(model: ir.Model, model_path: Path, weight_matmuls: set[str], feeds: list[dict[str, np.ndarray]],
                    bits: int, block_size: int, symmetric: bool, int8_activations: bool) -> list[dict]:
    """Every scaling site of `model` (saved at `model_path`, the same graph) scaled in place by its chosen s.
    Returns one record per site: what divides its channels, alpha, the quantized product's error unscaled and
    at alpha (relative to the product's energy)."""
    sites = scaling_sites(model, weight_matmuls)
    if not sites:
        return []
    activations = collect_activations(model_path, sorted({site.activation for site in sites}), feeds)
    records = []
    for site in sites:
        x = activations[site.activation]
        weight = np.concatenate([m.inputs[1].const_value.numpy() for m in site.readers], axis=1)
        alpha, s, error, unscaled = choose_scales(x, weight, bits, block_size, symmetric, int8_activations)
        if alpha > 0:
            apply_scales(site, s)
        records.append({"scaled_by": site.source, "alpha": alpha, "error_unscaled": unscaled, "error": error})
    return records
