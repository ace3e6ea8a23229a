"""Weight-only 4- and 8-bit: the weights of MatMuls with constant 2-D fp32 weights (projections, MLP, the LM
head) quantized block-wise into ONNX Runtime's MatMulNBits, which dequantizes a block at a time inside
the GEMM (with accuracy_level 4, on int8 blocks of the activations: its fast CPU path). Activations and
everything else stay fp32. onnxruntime.quantization does the rewriting (RTN, or HQQ for 4 bits);
attnopt decides which layers get 4 bits, which 8 and which stay fp32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from attnopt.errors import AttnoptError
from attnopt.passes.graph_utils import add_constant, attr, const_array, producer
from attnopt.passes.precision.int8 import Layer

#: precision -> bits of the quantized weights
BITS = {"int4": 4, "int8-weights": 8}
ALGORITHMS = ("rtn", "hqq")
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: ONNX Runtime's MatMulNBits computes on int8 blocks of the activations at this level: its fast CPU path
CPU_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class WeightOptions:
    block_size: int = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    accuracy_level: int = CPU_ACCURACY_LEVEL

    def to_dict(self) -> dict:
        return {"block_size": self.block_size, "symmetric": self.symmetric, "algorithm": self.algorithm,
                "accuracy_level": self.accuracy_level}


def _is_lm_head(node: ir.Node) -> bool:
    out = node.outputs[0]
    return out.is_graph_output() or any(u.op_type in ("Reshape", "Cast") and u.outputs[0].is_graph_output()
                                        for u in out.consumers())


def materialize_transposed_weights(model: ir.Model) -> int:
    """MatMul(x, Transpose(W)) with a constant 2-D W (a tied LM head: the embedding table, transposed) gets
    Wᵀ as its own constant, so the LM head is a weight layer like the others. Returns how many."""
    count = 0
    for node in list(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type != "MatMul":
            continue
        transpose = producer(node.inputs[1], "Transpose")
        table = const_array(transpose.inputs[0]) if transpose is not None else None
        if table is None or table.ndim != 2 or table.dtype != np.float32 or \
                list(attr(transpose, "perm", [1, 0]) or [1, 0]) != [1, 0]:
            continue
        node.replace_input_with(1, add_constant(model.graph, np.ascontiguousarray(table.T), f"{node.name}_weight"))
        count += 1
    return count


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


def quantize_weights(source: Path, output: Path, bits: dict[str, int], options: WeightOptions) -> None:
    """`source` -> `output` with each node of `bits` (node name -> 4 or 8) as MatMulNBits; others as they are."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer)

    from attnopt.passes.precision.int8 import quiet_quantizer

    model = onnx.load(str(source))
    for width in (4, 8):
        nodes = sorted(name for name, b in bits.items() if b == width)
        if not nodes:
            continue
        if options.algorithm == "hqq" and width == 4:
            config = HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4)
        else:  # round to nearest; HQQ has no 8-bit form
            config = DefaultWeightOnlyQuantConfig(block_size=options.block_size, is_symmetric=options.symmetric,
                                                  accuracy_level=options.accuracy_level, bits=width)
        # the quantizer takes every MatMul of its op types whatever nodes_to_include says: exclude the others
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in nodes]
        with quiet_quantizer():
            quantizer = MatMulNBitsQuantizer(model, bits=width, block_size=options.block_size,
                                             is_symmetric=options.symmetric, accuracy_level=options.accuracy_level,
                                             nodes_to_exclude=others, algo_config=config)
            quantizer.process()
        model = quantizer.model.model
    large = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(output), save_as_external_data=large, location=output.name + ".data" if large else None)
