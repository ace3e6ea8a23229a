"""Weight-only 4- and 8-bit: the weights of MatMuls with constant 2-D fp32 weights (projections, MLP, the LM
head) quantized block-wise into ONNX Runtime's MatMulNBits, which dequantizes a block at a time inside
the GEMM (with accuracy_level 4, on int8 blocks of the activations: its fast CPU path). Activations and
everything else stay fp32. onnxruntime.quantization writes each MatMulNBits (RTN) once per node, and attnopt
swaps them in per trial; for 4 bits, HQQ's, attnopt's importance-weighted search (weight_search, `mse`) or its
GPTQ (gptq, `gptq`) replace its values in the same layout; attnopt decides which layers get 4 bits, which 8 and
which stay fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from attnopt.errors import AttnoptError
from attnopt.passes.graph_utils import add_constant, attr, const_array, producer
from attnopt.passes.precision.int8 import Layer
from attnopt.passes.precision.gptq import FactorCache, gptq_blocks
from attnopt.passes.tied_weights import transposed_ties

#: precision -> bits of the quantized weights
BITS = {"int4": 4, "int8-weights": 8}
ALGORITHMS = ("rtn", "hqq", "mse", "gptq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: ONNX Runtime's MatMulNBits computes on int8 blocks of the activations at this level: its fast CPU path
CPU_ACCURACY_LEVEL = 4


#: int4's algorithm unless told: gptq (each row's rounding error pushed onto the rows not yet quantized through
#: the input's second moment, block scales by mse's search) keeps the most of a small model's answers with the
#: same op and layout as round to nearest (SmolLM2-135M, every layer 4-bit, symmetric, held out: top-1 0.73 vs
#: mse's 0.68 and rtn's 0.53, KL 0.14 vs 0.23 and 0.58); with the default tolerance the accuracy-aware search then
#: holds 2 of 16 body groups at 8 bits where mse held 14. int8-weights: rtn.
INT4_ALGORITHM = "gptq"
#: int4's blocks unless told (--symmetric, --asymmetric: uniform): symmetric, and where that misses the tolerance
#: the most sensitive groups get a zero point per block (zero points are per MatMulNBits, so per layer) before
#: any is held at 8 bits. On SmolLM2-135M, gptq, every MatMul at 4 bits, held out: all asymmetric top-1 0.79,
#: KL 0.12, perplexity 72.0, greedy 17/256; all symmetric 0.78, 0.15, 77.2, 32/256 (fp32 68.2), the builder's
#: kernel, 3-4% faster; on the calibration text symmetric misses int4's default tolerance (top-1 0.75-0.78 <
#: 0.80) where asymmetric meets it (0.82). Static-group act-order (rows by falling input energy) was tried and
#: dropped: top-1 0.80 asymmetric, 0.73 symmetric, with the fp32 embedding table. int8-weights stays symmetric.
INT4_ZERO_POINTS_WHERE_NEEDED = True
#: activation-aware scaling (equalize) unless told: for round to nearest only. On SmolLM2-135M (norms and gated
#: products scaled, the tied LM head not), held out: int8-weights top-1 0.953 -> 0.985, KL 0.0066 -> 0.0031; int4
#: rtn symmetric 0.54 -> 0.68, KL 0.60 -> 0.28. gptq already compensates most of it, and the scales then fit the
#: calibration text more than held-out text: symmetric top-1 0.78 -> 0.80 but perplexity 77.2 -> 78.5,
#: asymmetric 0.79 -> 0.82, KL 0.118 -> 0.120, perplexity 72.0 -> 76.3
EQUALIZE_METHODS = ("rtn",)

#: the bits int4 may put the LM head at: 4 by default, with the rest (every MatMul on the 4-bit kernel: the
#: onnxruntime-genai builder's int4 speed); when the tolerance is missed it is the first group given zero points
#: (or held at 8 bits), whatever its error alone (a 4-bit LM head moves the next token most while its logits' cosine barely moves:
#: ranked by that alone on SmolLM2-135M, the search once held every body group at 8 bits before it). 8 pins it
#: there, the builder's k_quant_last choice
LM_HEAD_BITS = (4, 8)


@dataclass(frozen=True)
class WeightOptions:
    block_size: int = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    accuracy_level: int = CPU_ACCURACY_LEVEL
    #: bits of the LM head when the others get fewer (int4); never more than 8
    lm_head_bits: int = 4
    #: a tied embedding read from quantized blocks (GatherBlockQuantized) instead of an fp32 table: its LM head's,
    #: or 8-bit round-to-nearest ones where the head's 4-bit codes were fitted (see tied_embedding)
    shared_embedding: bool = True
    #: activation-aware scaling of the norms' outputs and their readers' weights first (see equalize)
    equalize: bool = False
    #: symmetric blocks, with a zero point per block for the groups the tolerance needs (int4's default)
    zero_points_where_needed: bool = False

    def to_dict(self) -> dict:
        return {"block_size": self.block_size, "symmetric": self.symmetric, "algorithm": self.algorithm,
                "accuracy_level": self.accuracy_level, "lm_head_bits": self.lm_head_bits,
                "shared_embedding": self.shared_embedding, "equalize": self.equalize,
                "zero_points_where_needed": self.zero_points_where_needed}


def _is_lm_head(node: ir.Node) -> bool:
    out = node.outputs[0]
    return out.is_graph_output() or any(u.op_type in ("Reshape", "Cast") and u.outputs[0].is_graph_output()
                                        for u in out.consumers())


def materialize_transposed_weights(model: ir.Model) -> dict[str, str]:
    """MatMul(x, Transpose(W)) with a constant 2-D W (a tied LM head: the embedding table, transposed) gets
    Wᵀ as its own constant, so the LM head is a weight layer like the others (the Transpose goes where nothing
    else reads it). Returns node name -> W's name, with the ties an exporter wrote pre-transposed."""
    tied = {}
    for node in list(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type != "MatMul":
            continue
        transpose = producer(node.inputs[1], "Transpose")
        table = const_array(transpose.inputs[0]) if transpose is not None else None
        if table is None or table.ndim != 2 or table.dtype != np.float32 or \
                list(attr(transpose, "perm", [1, 0]) or [1, 0]) != [1, 0]:
            continue
        tied[node.name] = transpose.inputs[0].name
        node.replace_input_with(1, add_constant(model.graph, np.ascontiguousarray(table.T), f"{node.name}_weight"))
        if not transpose.outputs[0].uses() and not transpose.outputs[0].is_graph_output():
            model.graph.remove(transpose, safe=True)
    return tied | transposed_ties(model, set(tied))  # an exporter's pre-transposed copy (see tied_weights)


def weight_layers(model: ir.Model) -> list[Layer]:
    """MatMuls with a constant 2-D fp32 weight, in graph order; the one producing a graph output is the LM head."""
    found = []
    for node in model.graph:
        if node.domain in ("", "ai.onnx") and node.op_type == "MatMul":
            weight = const_array(node.inputs[1])
            if weight is not None and weight.ndim == 2 and weight.dtype == np.float32:
                found.append(Layer(node.name, node.op_type, "lm_head" if _is_lm_head(node) else "linear"))
    return found


#: groups the accuracy-aware search ranks (one trial each), whatever the model's depth
SEARCH_GROUPS = 16


def layer_groups(layers: list[Layer]) -> dict[str, list[str]]:
    """Weight layers in contiguous groups of graph order (about a transformer block each on deep models),
    the LM head alone: the unit that falls back when the tolerance is missed."""
    body = [layer.name for layer in layers if layer.kind != "lm_head"]
    groups: dict[str, list[str]] = {}
    for chunk in np.array_split(np.arange(len(body)), min(SEARCH_GROUPS, len(body))) if body else []:
        groups[f"weights {chunk[0] + 1}-{chunk[-1] + 1} of {len(body)}"] = [body[i] for i in chunk]
    for layer in layers:
        if layer.kind == "lm_head":
            groups[f"LM head {layer.name}"] = [layer.name]
    return groups


def check_block_size(model: ir.Model, layers: list[Layer], block_size: int) -> None:
    """Blocks run along each weight's inner (input) axis: the block size must divide it."""
    if block_size not in BLOCK_SIZES:
        raise AttnoptError(f"block size {block_size} is not supported", f"choose one of {BLOCK_SIZES}")
    nodes = {node.name: node for node in model.graph}
    for layer in layers:
        inner = const_array(nodes[layer.name].inputs[1]).shape[0]
        if inner % block_size:
            fits = [b for b in BLOCK_SIZES if inner % b == 0]
            raise AttnoptError(f"block size {block_size} does not divide the inner dimension {inner} of {layer.name}",
                               f"choose a block size that divides it: {', '.join(map(str, fits)) or 'none does'}")


def quantize_weights(source: Path, output: Path, bits: dict[str, int], options: WeightOptions,
                     importance: dict[str, np.ndarray] | None = None, memo: dict | None = None,
                     tied: dict[str, str] | None = None, zero_points: frozenset[str] = frozenset()) -> list[str]:
    """`source` -> `output` with each node of `bits` (node name -> 4 or 8) as MatMulNBits; others as they are.
    HQQ, mse and gptq (4 bits) are written in round-to-nearest's layout, which ONNX Runtime's fast CPU kernel
    runs: the layout by the quantizer, the values the algorithm's. mse weighs each input channel by `importance`
    (node name -> [K], mean x^2 of the MatMul's input on the calibration data; None: alike); gptq needs the
    whole second moment there (node name -> [K, K], E[x xᵀ]). `memo` (a dict kept by the caller) holds the
    parsed source (one more copy of the fp32 model in memory while the caller keeps it) and each node's
    quantized form (the quantizer's node and initializers, the searched blocks), so trials that quantize a node
    again reuse it. `tied` (LM head node -> embedding table, see
    materialize_transposed_weights): with options.shared_embedding, the embedding reads the quantized head's
    blocks, or 8-bit round-to-nearest ones of its table where the head's 4-bit codes are searched (hqq, mse,
    gptq). `zero_points`: 4-bit nodes given a zero point per block even where options.symmetric. Returns the
    embedding tables so replaced."""
    import onnx

    from attnopt.passes.precision.tied_embedding import share_quantized_embedding

    memo = {} if memo is None else memo
    if ("source", str(source)) not in memo:  # parsed once; every trial starts from a copy of its shell
        memo["source", str(source)] = onnx.load(str(source))
        memo["shell", str(source)] = _shell(memo["source", str(source)])
    original = memo["source", str(source)]  # its fp32 weights are read from here, never copied
    weights = {n.name: n.input[1] for n in original.graph.node if n.name in bits}
    model = _trial_copy(memo["shell", str(source)], original, set(bits))
    layouts: dict[tuple[int, bool], list[str]] = {}
    for name, width in bits.items():
        # at 4 bits a node asked for zero points gets them, and HQQ's blocks always carry them
        zero_pointed = width == 4 and (name in zero_points or options.algorithm == "hqq")
        layouts.setdefault((width, options.symmetric and not zero_pointed), []).append(name)
    for (width, symmetric), names in sorted(layouts.items()):
        names = sorted(names)
        searched = options.algorithm in SEARCHED and width == 4  # neither has an 8-bit form here: RTN there
        layout = (width, options.block_size, symmetric, options.accuracy_level)
        _round_to_nearest(original, [n for n in names if ("rtn", n, *layout) not in memo], layout, memo)
        nodes = {n.name: n for n in model.graph.node}  # afresh: _write_blocks rebuilds the node list
        known = {i.name for i in model.graph.initializer}
        for name in names:
            _replace_node(model, nodes[name], *memo["rtn", name, *layout], known)
        factors = FactorCache()
        for name in names if searched else ():
            key = (name, options.algorithm, options.block_size, symmetric)
            if key not in memo:
                memo[key] = _searched_blocks(_initializer(original, weights[name]), options.algorithm,
                                             options.block_size, symmetric, (importance or {}).get(name), factors)
        if searched:
            _write_blocks(model, {name: memo[name, options.algorithm, options.block_size, symmetric]
                                  for name in names}, options.block_size)
    _drop_unread_initializers(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    shared = []
    if tied and options.shared_embedding:
        # a head whose codes were fitted to its inputs serves the embedding 8-bit round to nearest blocks instead
        fitted = sorted(h for h in tied if bits.get(h) == 4 and options.algorithm in SEARCHED)
        layout = (8, options.block_size, options.symmetric, options.accuracy_level)
        _round_to_nearest(original, [h for h in fitted if ("rtn", h, *layout) not in memo], layout, memo)
        shared = share_quantized_embedding(model, tied, {h: memo["rtn", h, *layout] for h in fitted})
    large = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(output), save_as_external_data=large, location=output.name + ".data" if large else None)
    return shared


def _shell(source):
    """`source` without its initializers (copied once: each trial then copies only what it keeps)."""
    import onnx

    shell = onnx.ModelProto()
    shell.CopyFrom(source)
    del shell.graph.initializer[:]
    return shell


def _trial_copy(shell, source, nodes: set[str]):
    """A trial's model: the shell and every initializer of `source` but the weights that only the MatMuls in
    `nodes` read (their quantized tables come in instead). A 540 MB fp32 model is not copied whole per trial,
    which on a model of billions of weights would hold it twice."""
    import onnx

    replaced = {node.input[1] for node in source.graph.node if node.name in nodes}
    read_elsewhere = {name for node in source.graph.node
                      for i, name in enumerate(node.input) if node.name not in nodes or i != 1}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in source.graph.node
           for a in n.attribute):
        read_elsewhere |= replaced  # subgraphs may read any of them: keep them all (dropped later if unread)
    model = onnx.ModelProto()
    model.CopyFrom(shell)
    model.graph.initializer.extend(i for i in source.graph.initializer
                                   if i.name not in replaced or i.name in read_elsewhere)
    return model


def _round_to_nearest(model, names: list[str], layout: tuple[int, int, bool, int], memo: dict) -> None:
    """ONNX Runtime's quantizer on a graph of just these MatMuls (so it neither copies nor walks the whole
    model): memo[("rtn", name, *layout)] = (its MatMulNBits node, that node's initializers)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from attnopt.passes.precision.int8 import quiet_quantizer

    if not names:
        return
    width, block_size, symmetric, accuracy_level = layout
    wanted = set(names)
    initializers = {i.name: i for i in model.graph.initializer}
    originals = [n for n in model.graph.node if n.name in wanted]
    weights = {n.input[1] for n in originals}
    if weights - set(initializers):
        raise AttnoptError(f"{', '.join(sorted(weights - set(initializers))[:3])}: weights that are not initializers",
                           "run the model through `attnopt optimize` first, which makes constant weights initializers")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", [f"{n.name}_input", n.input[1]], [f"{n.name}_output"], name=n.name)
         for n in originals], "weights",
        [onnx.helper.make_tensor_value_info(f"{n.name}_input", onnx.TensorProto.FLOAT, None) for n in originals],
        [onnx.helper.make_tensor_value_info(f"{n.name}_output", onnx.TensorProto.FLOAT, None) for n in originals],
        [initializers[w] for w in sorted(weights)])
    scratch = onnx.helper.make_model(graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level, bits=width)
    with quiet_quantizer():
        quantizer = MatMulNBitsQuantizer(scratch, bits=width, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, algo_config=config)
        quantizer.process()
    done = quantizer.model.model.graph
    tables = {i.name: i for i in done.initializer}
    for node in done.node:
        name = node.name[:-len(f"_Q{width}")] if node.op_type == "MatMulNBits" else None
        if name in wanted:
            memo["rtn", name, *layout] = (node, [tables[i] for i in node.input[1:] if i in tables])
    left = [name for name in names if ("rtn", name, *layout) not in memo]
    if left:
        raise AttnoptError(f"onnxruntime's quantizer left {', '.join(left[:3])} as MatMul at {width} bits",
                           "report it with the model")


def _replace_node(model, node, quantized, tables, known: set[str]) -> None:
    """`node` (a MatMul) becomes the cached `quantized` MatMulNBits, in place (graph order kept), reading its
    input and writing its output; its tables join the model's initializers (`known`: their names, kept up)."""
    source, result = node.input[0], node.output[0]
    node.CopyFrom(quantized)
    node.input[0], node.output[0] = source, result
    new = [t for t in tables if t.name not in known]
    model.graph.initializer.extend(new)
    known.update(t.name for t in new)


def _drop_unread_initializers(model) -> None:
    """The fp32 weights the swapped nodes no longer read, as the quantizer drops them (subgraphs' reads
    counted, and their graph-input entries removed too)."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(model).clean_initializers()


#: the 4-bit algorithms whose values replace the quantizer's round-to-nearest ones (same layout)
SEARCHED = ("hqq", "mse", "gptq")


def _searched_blocks(weight: np.ndarray, algorithm: str, block_size: int, symmetric: bool,
                     importance: np.ndarray | None, factors: FactorCache | None = None) -> tuple:
    """MatMulNBits' packed codes, scales, packed zero points (None: symmetric) and per-block offsets (None:
    none needed) of a [K, N] weight by `algorithm` (gptq keeps its H⁻¹ factors in `factors`)."""
    if algorithm == "hqq":
        return hqq_blocks(weight, block_size)
    if algorithm == "gptq":
        if importance is None or importance.ndim != 2:
            raise ValueError("gptq needs the input's second moment E[x xᵀ]")
        codes, scales, zeros = gptq_blocks(weight, importance, block_size, symmetric, factors=factors)
    else:
        from attnopt.passes.precision.weight_search import search_blocks

        codes, scales, zeros = search_blocks(weight, importance, block_size, symmetric)
    return pack_codes(codes), scales, None if zeros is None else pack_zero_points(zeros), None


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """4-bit codes [N, K/block, block] as MatMulNBits packs them: two a byte, the first in the low nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def pack_zero_points(zeros: np.ndarray) -> np.ndarray:
    """4-bit zero points [N, K/block] as MatMulNBits packs them: [N, ceil(K/block / 2)], low nibble first."""
    zeros = zeros.astype(np.uint8)
    if zeros.shape[1] % 2:
        zeros = np.pad(zeros, ((0, 0), (0, 1)))
    return zeros[:, 0::2] | (zeros[:, 1::2] << 4)


def _initializer(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _write_blocks(model, values: dict[str, tuple], block_size: int) -> None:
    """Replaces the round-to-nearest values of each MatMulNBits made from a node of `values` (node name ->
    packed codes, scales, packed zero points or None, offsets or None) by those, in the same shapes. Offsets
    are what an integer zero point cannot hold (HQQ's real zero point is z + r with z the uint8 the kernel
    reads, so W = (q - z) s - r s): x W = MatMulNBits(x) + (x E) C, with E [K, K/block] summing x over each
    block and C [K/block, N] = -r s (a MatMul 1/block the size)."""
    import onnx
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    made = {n.name: n for n in nodes if n.op_type == "MatMulNBits"}
    after: dict[str, list] = {}
    for name, (packed, scales, zero_points, offsets) in values.items():
        node = made[f"{name}_Q4"]
        if (zero_points is None) != (len(node.input) < 4):
            raise ValueError(f"{name}: zero points do not match the quantizer's layout")
        for input_name, value in zip(node.input[1:4], (packed, scales, zero_points)):
            old = initializers[input_name]
            old.CopyFrom(numpy_helper.from_array(value.reshape(numpy_helper.to_array(old).shape), input_name))
        if offsets is None:
            continue
        k = offsets.shape[0] * block_size
        sums = f"hqq_block_sums_{k}x{block_size}"
        if sums not in initializers:
            indicator = np.kron(np.eye(k // block_size, dtype=np.float32), np.ones((block_size, 1), np.float32))
            initializers[sums] = numpy_helper.from_array(indicator, sums)
            model.graph.initializer.append(initializers[sums])
        table = f"{node.name}_offsets"
        model.graph.initializer.append(numpy_helper.from_array(offsets, table))
        out = node.output[0]
        node.output[0] = f"{out}_codes"
        after[node.name] = [
            onnx.helper.make_node("MatMul", [node.input[0], sums], [f"{out}_block_sums"], name=f"{node.name}_block_sums"),
            onnx.helper.make_node("MatMul", [f"{out}_block_sums", table], [f"{out}_offsets"], name=f"{node.name}_offsets"),
            onnx.helper.make_node("Add", [node.output[0], f"{out}_offsets"], [out], name=f"{node.name}_offset_add"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(n for node in nodes for n in [node, *after.get(node.name, [])])


def hqq_blocks(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A [K, N] fp32 weight as HQQ's 4-bit asymmetric blocks along K, in MatMulNBits' layout: packed codes
    [N, K/block, block/2], scales [N, K/block], packed uint8 zero points [N, ceil(K/block / 2)], and the part of
    HQQ's real zero point the uint8 cannot hold, as offsets [K/block, N] to add per block (see _write_blocks).
    HQQ's half-quadratic solver is onnxruntime's."""
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

    k, n = weight.shape
    blocks = k // block_size
    solver = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=block_size, bits=4))
    codes, scale, zero = solver.quantize_internal(torch.from_numpy(np.array(weight.T)), bits=4,
                                                  group_size=block_size)
    codes = codes.numpy().reshape(n, blocks, block_size).astype(np.uint8)
    scale, zero = scale.numpy().reshape(n, blocks), zero.numpy().reshape(n, blocks)
    stored = np.clip(np.round(zero), 0, 15)
    offsets = ((stored - zero) * scale).T.astype(np.float32)
    return pack_codes(codes), scale.astype(np.float32), pack_zero_points(stored), np.ascontiguousarray(offsets)
