"""ONNX Runtime: its contrib kernels (CPU and CUDA). GroupQueryAttention for attention over a KV cache;
Attention with packed QKV weights for self-attention over projections of one input, else
MultiHeadAttention, fed without extra transposes where the exporter's own head split and merge can be
seen through; (Skip)LayerNormalization and
(Skip)SimplifiedLayerNormalization with the residual Add folded in; Gelu, FastGelu and BiasGelu;
RotaryEmbedding with position ids."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from attnopt.errors import AttnoptError
from attnopt.passes.fusion.gelu import added_bias
from attnopt.passes.fusion.skip import residual_add
from attnopt.passes.graph_utils import (ATTNOPT_DOMAIN, MS_DOMAIN, add_constant, attr, const_array, ensure_opset,
                                        new_node, only_consumer, producer, replace_value)
from attnopt.passes.lower import ABSORBED_KEY, Lowering
from attnopt.passes.lower.causal_padding import padding_bias, padding_input
from attnopt.passes.lower.common import (Fused, cache_axis_key, cache_inputs, concatenate_cache, float_bias,
                                         full_mask, half_cache, key_count, kv_for_all_heads, replace_output,
                                         shared)
from attnopt.passes.lower.rotary_tables import position_tables
from attnopt.passes.shapes import named_axes, shape_pieces, static_dims
from attnopt.runtime.onnxruntime import contrib_op_inputs


def _bsd_source(x: ir.Value, heads: int, size: int) -> ir.Value | None:
    """The (B, S, H*D) tensor that x (B, H, S, D) was split from by Reshape + Transpose, if plainly so."""
    split = producer(x, "Transpose")
    if split is None or list(attr(split, "perm", []) or []) != [0, 2, 1, 3]:
        return None
    reshape = producer(split.inputs[0], "Reshape")
    if reshape is None:
        return None
    src = static_dims(reshape.inputs[0])
    pieces = shape_pieces(reshape.inputs[1])
    if src is not None and len(src) == 3 and pieces is not None and pieces[2:] in ([heads, size], [-1, size]):
        return reshape.inputs[0]
    return None


def _to_bsd(graph: ir.Graph, node: ir.Node, x: ir.Value, heads: int, size: int) -> ir.Value:
    """x (B, H, S, D) as (B, S, H*D): the exporter's own tensor before its head split, or a new merge."""
    source = _bsd_source(x, heads, size)
    if source is not None:
        return source
    x = new_node(graph, node, "Transpose", [x], {"perm": [0, 2, 1, 3]}, name="bshd").outputs[0]
    shape = add_constant(graph, np.array([0, 0, heads * size], dtype=np.int64), f"{node.name}_bsd_shape")
    return new_node(graph, node, "Reshape", [x, shape], name="bsd").outputs[0]


def _projection(x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value | None] | None:
    """x = MatMul(input, W) [+ b] with a constant 2-D W and 1-D b: (input, W, b)."""
    add = producer(x, "Add")
    bias = None
    if add is not None:
        bias = next((v for v in add.inputs if const_array(v) is not None and const_array(v).ndim == 1), None)
        if bias is None:
            return None
        x = add.inputs[1] if add.inputs[0] is bias else add.inputs[0]
    matmul = producer(x, "MatMul")
    if matmul is None or const_array(matmul.inputs[1]) is None or const_array(matmul.inputs[1]).ndim != 2:
        return None
    return matmul.inputs[0], matmul.inputs[1], bias


def _gemm_projection(x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value | None] | None:
    """x = Reshape(Gemm(Reshape(input, (-1, in)), W, b), (B, S, out)) (a Conv1D/addmm as exporters write
    it) with constant W and b: (input, W, b), W as (in, out)."""
    outer = producer(x, "Reshape")
    gemm = producer(outer.inputs[0], "Gemm") if outer is not None else None
    inner = producer(gemm.inputs[0], "Reshape") if gemm is not None else None
    if inner is None or attr(gemm, "transA", 0) or attr(gemm, "alpha", 1.0) != 1.0 or attr(gemm, "beta", 1.0) != 1.0:
        return None
    weight = const_array(gemm.inputs[1])
    bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    src = static_dims(inner.inputs[0])
    if weight is None or weight.ndim != 2 or (bias is not None and const_array(bias) is None) or not src or len(src) != 3:
        return None
    if attr(gemm, "transB", 0):
        return None  # a transposed weight would need a new initializer; not written by today's exporters
    return inner.inputs[0], gemm.inputs[1], bias


def _split_projection(q: ir.Value, k: ir.Value, v: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    """Q, K, V as the three equal parts of one projection's last axis (GPT-2's c_attn):
    (input, packed weight, packed bias)."""
    split = producer(q, "Split")
    if split is None or list(split.outputs) != [q, k, v] or attr(split, "axis", 0) not in (-1, 2):
        return None
    sizes = const_array(split.inputs[1]) if len(split.inputs) > 1 and split.inputs[1] is not None else None
    if sizes is not None and len(set(int(x) for x in sizes)) != 1:
        return None
    found = _projection(split.inputs[0]) or _gemm_projection(split.inputs[0])
    if found is None:
        return None
    source, weight, bias = found
    w = const_array(weight)
    b = const_array(bias) if bias is not None else np.zeros(w.shape[1], np.float32)
    if w.dtype != np.float32 or w.shape[1] % 3 or b.shape != (w.shape[1],):
        return None
    return source, w, b.astype(np.float32)


def _fold_biases(graph: ir.Graph, node: ir.Node, q: ir.Value, k: ir.Value, v: ir.Value
                 ) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value | None]:
    """MultiHeadAttention adds the Q, K and V biases itself when given them packed in one input."""
    parts = [_projection(t) for t in (q, k, v)]
    if any(p is None or p[2] is None for p in parts):
        return q, k, v, None
    bias = np.concatenate([const_array(p[2]) for p in parts]).astype(np.float32)  # type: ignore[index]
    plain = [producer(t, "Add") for t in (q, k, v)]
    unbiased = [a.inputs[0] if a.inputs[1] is p[2] else a.inputs[1] for a, p in zip(plain, parts)]  # type: ignore[union-attr,index]
    return unbiased[0], unbiased[1], unbiased[2], add_constant(graph, bias, f"{node.name}_qkv_bias")


def _packed_projection(q: ir.Value, k: ir.Value, v: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray, bool] | None:
    """Q, K and V (B, S, H*D) as projections of one input: (that input, the packed weight [Wq | Wk | Wv],
    the packed bias, whether the three are equally wide), from one projection split in three equal parts
    or from three projections."""
    split = _split_projection(q, k, v)
    if split is not None:
        return (*split, True)
    parts = [_projection(t) for t in (q, k, v)]
    if any(p is None for p in parts) or not (parts[0][0] is parts[1][0] is parts[2][0]):  # type: ignore[index]
        return None
    weights = [const_array(p[1]) for p in parts]  # type: ignore[index]
    if len({w.shape[0] for w in weights}) != 1 or any(w.dtype != np.float32 for w in weights):
        return None
    biases = [const_array(p[2]) if p[2] is not None else np.zeros(w.shape[1], np.float32)  # type: ignore[index]
              for p, w in zip(parts, weights)]
    equal = len({w.shape for w in weights}) == 1
    return parts[0][0], np.concatenate(weights, axis=1), np.concatenate(biases).astype(np.float32), equal  # type: ignore[index]


def _packed_attention(graph: ir.Graph, node: ir.Node, q: ir.Value, k: ir.Value, v: ir.Value, heads: int,
                      bias_input: Callable[[ir.Value], ir.Value | None]) -> ir.Node | None:
    """Self-attention whose Q, K and V are projections of one input: ONNX Runtime's Attention op runs
    the three projections as one packed GEMM, its fastest CPU path."""
    packed = _packed_projection(q, k, v)
    if packed is None or not packed[3]:  # the op splits its packed QKV in three equal parts
        return None
    source, weight, bias, _ = packed
    packed_w = add_constant(graph, weight, f"{node.name}_qkv_weight")
    packed_b = add_constant(graph, bias.astype(np.float32), f"{node.name}_qkv_bias")
    inputs = [source, packed_w, packed_b, None, None, bias_input(source)]
    while inputs[-1] is None:
        inputs.pop()
    return new_node(graph, node, "Attention", inputs, {"num_heads": heads, "scale": float(attr(node, "scale"))},
                    domain=MS_DOMAIN, name="packed_attention")


def _merged_output(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """The exporter's Transpose+Reshape that merges heads back to (B, S, H*Dv), when that is all
    the attention output feeds: MultiHeadAttention already produces that tensor."""
    out = node.outputs[0]
    transpose = only_consumer(out)
    if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm", []) or []) != [0, 2, 1, 3]:
        return None
    reshape = only_consumer(transpose.outputs[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    heads, size = attr(node, "q_num_heads", 0), attr(node, "v_head_size", 0)
    pieces = shape_pieces(reshape.inputs[1])
    if pieces is not None and len(pieces) == 3 and pieces[:2] == [0, 0] and pieces[2] in (heads * size, -1):
        return transpose, reshape  # (0, 0, H*Dv): keeps B and S, merges the rest
    dims = static_dims(reshape.outputs[0])
    if dims is not None and len(dims) == 3 and dims[2] == heads * size:
        # (B, S, H, Dv) -> rank 3 ending in H*Dv: the exporter's merge (it computes B and S from shapes)
        return transpose, reshape
    return None


def _mask_bias(graph: ir.Graph, node: ir.Node, q: ir.Value, k: ir.Value, k_axis: int) -> ir.Value | None:
    """The canonical mask as the fused op's attention_bias. The sequence lengths are read off tensors
    the fused op consumes anyway (q as (B, S, hidden)), so no projection stays alive for its shape."""
    if len(node.inputs) < 4 or node.inputs[3] is None:
        return None
    bias = float_bias(graph, node, node.inputs[3])
    if k_axis == 1:
        return full_mask(graph, node, bias, q, k, seq_axis=1)
    # K as (B, H, S, D): read Sk off axis 2 by broadcasting against q's length first
    return full_mask(graph, node, bias, node.inputs[0], k, seq_axis=2)


def _cache_lengths(graph: ir.Graph, node: ir.Node, bias: ir.Value, batch_of: ir.Value,
                   query_seqlens: bool) -> list[ir.Value]:
    """GroupQueryAttention's lengths for a batch whose rows all span every key: seqlens_k (total - 1 per
    row), total_sequence_length, and where the runtime takes it query_seqlens (every query row real), read
    off the full (.., S, total) bias. Padding stays in the bias, so left-padded batches keep the model's
    semantics."""
    def as_int32(value: ir.Value, name: str) -> ir.Value:
        return new_node(graph, node, "Cast", [value], {"to": ir.DataType.INT32}, name=name).outputs[0]

    def build() -> list[ir.Value]:
        batch = new_node(graph, node, "Shape", [batch_of], {"start": 0, "end": 1}, name="batch").outputs[0]
        queries = new_node(graph, node, "Shape", [bias], {"start": 2, "end": 3}, name="queries").outputs[0]
        keys = new_node(graph, node, "Shape", [bias], {"start": 3, "end": 4}, name="keys").outputs[0]
        one = add_constant(graph, np.array([1], dtype=np.int64), f"{node.name}_one")
        last = new_node(graph, node, "Sub", [keys, one], name="last_key").outputs[0]
        seqlens = as_int32(new_node(graph, node, "Expand", [last, batch], name="seqlens").outputs[0], "seqlens_k")
        axis0 = add_constant(graph, np.array([0], dtype=np.int64), f"{node.name}_axis0")
        total = as_int32(new_node(graph, node, "Squeeze", [keys, axis0], name="total").outputs[0], "total_length")
        if not query_seqlens:
            return [seqlens, total]
        rows = new_node(graph, node, "Expand", [queries, batch], name="query_rows").outputs[0]
        return [seqlens, total, as_int32(rows, "query_seqlens")]

    # one set for all layers that share the bias and a declared batch axis
    return shared(graph, ("gqa lengths", id(bias), cache_axis_key(batch_of, 0)), build)


def _takes_group_query(attributes: dict, inputs: Sequence[ir.Value | None]) -> bool:
    """GroupQueryAttention applies: a cache, a mask (with none the model attends without causality, which
    the kernel cannot do with a cache), whole groups of query heads per K/V head, V as wide as K."""
    heads, kv_heads = attributes.get("q_num_heads", 0), attributes.get("kv_num_heads", 0)
    return len(inputs) > 5 and all(inputs[i] is not None for i in (3, 4, 5)) and bool(kv_heads) \
        and heads % kv_heads == 0 and attributes.get("head_size", 0) == attributes.get("v_head_size", 0)


def _group_query_attention(model: ir.Model, node: ir.Node, positions: int | None,
                           query_seqlens: bool) -> Fused | None:
    """Attention over a KV cache as ONNX Runtime's GroupQueryAttention: K/V heads are not repeated and
    the cache is appended inside the kernel. Its causal mask (query i sees keys up to past + i) is one the
    model's own mask already applies; where the model's mask is shown to be that and the key padding alone
    (causal_padding), the bias is the padding read off attention_mask, else the model's mask goes in whole
    (windows, anything else), and verification holds the model to it. `positions`: how many positions the
    model has rotary tables for (its context length), where known."""
    graph = model.graph
    attributes = {a.name: a.value for a in node.attributes.values()}
    if not _takes_group_query(attributes, list(node.inputs)):
        return None
    past = cache_inputs(node)
    heads, kv_heads, size = attributes["q_num_heads"], attributes["kv_num_heads"], attributes["head_size"]
    # without query_seqlens the kernel rotates a prompt from its rows' first position ids on, which puts a
    # left-padded row's keys at the wrong positions in the cache: rotary then stays outside
    rotary = _shared_rotary(node) if query_seqlens else None
    q, k = (rotary[0].inputs[0], rotary[1].inputs[0]) if rotary is not None else (node.inputs[0], node.inputs[1])
    query = _to_bsd(graph, node, q, heads, size)
    key = _to_bsd(graph, node, k, kv_heads, size)
    value = _to_bsd(graph, node, node.inputs[2], kv_heads, size)
    packed = _packed_projection(query, key, value)
    # lengths are read off a (B, S, ..) tensor the kernel consumes, so no projection stays alive for its shape
    lengths_of = packed[0] if packed is not None else query
    padding = padding_input(model, node.inputs[3], positions)
    keys = key_count(graph, node, lengths_of, new_axis=1)
    if padding is not None:  # the kernel masks causally: the bias need only carry the padding
        bias = padding_bias(graph, node, padding, lengths_of, keys)
    else:
        bias = full_mask(graph, node, float_bias(graph, node, node.inputs[3]), lengths_of, lengths_of, seq_axis=1,
                         keys=keys)
    seqlens, total, *real = _cache_lengths(graph, node, bias, past[0], query_seqlens)
    tables: list[ir.Value | None] = [None, None, None]
    if rotary is not None:
        tables = _rotary_tables(model, node, rotary[0], lengths_of, bias, positions)
    qkv: list[ir.Value | None] = [query, key, value]
    if packed is not None:  # one GEMM for Q, K and V; the kernel splits them (the builder's form)
        source, weight, packed_bias, _ = packed
        product = new_node(graph, node, "MatMul", [source, add_constant(graph, weight, f"{node.name}_qkv_weight")],
                           name="qkv").outputs[0]
        if np.any(packed_bias):
            product = new_node(graph, node, "Add", [product, add_constant(graph, packed_bias, f"{node.name}_qkv_bias")],
                               name="qkv_bias").outputs[0]
        qkv = [product, None, None]
    inputs = [*qkv, past[0], past[1], seqlens, total, *tables, bias, *([None] * 5 + real if real else [])]
    options = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": float(attr(node, "scale")), "causal": 1,
               "do_rotary": int(rotary is not None), "rotary_interleaved": 0}
    if attributes.get("softcap"):  # the kernel caps the scaled scores before adding the bias, as the model does
        options["softcap"] = float(attributes["softcap"])
    fused = new_node(graph, node, "GroupQueryAttention", inputs, options, domain=MS_DOMAIN, num_outputs=3, name="gqa")
    replace_value(node.outputs[1], fused.outputs[1])
    replace_value(node.outputs[2], fused.outputs[2])
    details = ["KV cache", *(["rotary inside"] if rotary is not None else []),
               *(["padding-only bias"] if padding is not None else [])]
    form = f"GroupQueryAttention ({', '.join(details)})"
    _attach_output(graph, node, fused, lengths_of)
    for taken in rotary or ():
        for reader in list(taken.outputs[0].consumers()):  # Shape readers (TorchScript): the unrotated one's
            reader.replace_input_with(0, taken.inputs[0])
        taken.meta[ABSORBED_KEY] = ("RotaryEmbedding (inside GroupQueryAttention)", fused)
        graph.remove(taken, safe=True)
    return form, fused


def _shared_rotary(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """The canonical rotary embeddings of Q and K, when they rotate the whole head with the same cos and
    sin and feed nothing but this attention (and Shape): GroupQueryAttention then rotates inside its kernel."""
    rotations = [node.inputs[i].producer() for i in (0, 1)]
    if any(r is None or r.domain != ATTNOPT_DOMAIN or r.op_type != "RotaryEmbedding" for r in rotations):
        return None
    q_rot, k_rot = rotations
    if q_rot.inputs[1] is not k_rot.inputs[1] or q_rot.inputs[2] is not k_rot.inputs[2]:
        return None
    size = attr(node, "head_size", 0)
    if any(attr(r, "rotary_dim", 0) != size for r in rotations):
        return None  # partial rotary: the kernel rotates whole heads
    for r in rotations:
        readers = [u for u in r.outputs[0].consumers() if u is not node]
        if r.outputs[0].is_graph_output() or any(u.op_type != "Shape" or u.domain not in ("", "ai.onnx")
                                                 for u in readers):
            return None
    return q_rot, k_rot


def _rotary_tables(model: ir.Model, node: ir.Node, rotary: ir.Node, x: ir.Value, bias: ir.Value,
                   positions: int | None) -> list[ir.Value]:
    """cos_cache, sin_cache and position_ids for GroupQueryAttention: constant tables by position where the
    model's cos and sin are a function of its position ids alone and its context length is known, else
    the model's own per-token tables flattened (see _flat_rotary_caches) and padded, with rows the kernel
    never reads, to the at least as many rows as keys that it wants."""
    graph = model.graph
    cos, sin, rotary_dim = rotary.inputs[1], rotary.inputs[2], attr(rotary, "rotary_dim", 0)

    def build() -> list[ir.Value]:
        by_position = _tables_by_position(model, cos, sin, rotary_dim, positions)
        if by_position is not None:
            return list(by_position)
        flat_cos, flat_sin, ids = _flat_rotary_caches(graph, node, cos, sin, rotary_dim, x)
        keys = new_node(graph, node, "Shape", [bias], {"start": 3, "end": 4}, name="table_keys").outputs[0]
        rows = new_node(graph, node, "Shape", [flat_cos], {"start": 0, "end": 1}, name="table_rows").outputs[0]
        short = new_node(graph, node, "Sub", [keys, rows], name="table_short").outputs[0]
        none = add_constant(graph, np.array([0], dtype=np.int64), f"{node.name}_no_rows")
        extra = new_node(graph, node, "Max", [short, none], name="table_extra").outputs[0]
        # pads: (begin rows, begin cols, end rows, end cols) = (0, 0, extra, 0)
        pads = new_node(graph, node, "Concat", [none, none, extra, none], {"axis": 0}, name="table_pads").outputs[0]
        padded = [new_node(graph, node, "Pad", [t, pads], name=f"{n}_cache").outputs[0]
                  for t, n in ((flat_cos, "cos"), (flat_sin, "sin"))]
        return [*padded, ids]

    return shared(graph, ("rotary tables", id(cos), id(sin), id(bias)), build)


def _tables_by_position(model: ir.Model, cos: ir.Value, sin: ir.Value, rotary_dim: int, positions: int | None
                        ) -> tuple[ir.Value, ir.Value, ir.Value] | None:
    """position_tables, computed once per (cos, sin) of the graph for every kernel that reads them."""
    if not positions:
        return None
    return shared(model.graph, ("rotary by position", id(cos), id(sin)),
                  lambda: position_tables(model, cos, sin, rotary_dim, positions))


def _named_dim(graph: ir.Graph, places: list[tuple[ir.Value, int]]) -> int | ir.SymbolicDim | None:
    """The first of these axes known as a number or one of the graph inputs' named axes."""
    named = named_axes(graph)
    for value, axis in places:
        if value is not None and value.shape is not None and len(value.shape) > axis:
            dim = value.shape[axis]
            if isinstance(dim, int) or dim.value in named:
                return dim
    return None


def _attach_output(graph: ir.Graph, node: ir.Node, fused: ir.Node, queries: ir.Value) -> ir.Node:
    """The fused op's (B, S, H*Dv) output in place of the canonical (B, H, S, Dv) one: straight into the
    model's own head merge where that is all it feeds, else split back into heads. `queries`: a (B, S, ..)
    tensor the (B, S) of the output's shape is annotated from."""
    merge = _merged_output(node)
    if merge is not None:
        transpose, reshape = merge
        replace_value(reshape.outputs[0], fused.outputs[0])
        graph.remove([reshape, transpose, node], safe=True)
        return fused
    heads, v_size = attr(node, "q_num_heads", 0), attr(node, "v_head_size", 0)
    # (B, S) as the graph's named axes where the (B, S, ..) queries or the (B, H, S, D) ones know them
    batch, tokens = (_named_dim(graph, [(queries, 0), (node.inputs[0], 0), (node.outputs[0], 0)]),
                     _named_dim(graph, [(queries, 1), (node.inputs[0], 2), (node.outputs[0], 2)]))
    shape = add_constant(graph, np.array([0, 0, heads, v_size], dtype=np.int64), f"{node.name}_out_shape")
    split = new_node(graph, node, "Reshape", [fused.outputs[0], shape], name="out_bshd").outputs[0]
    bhsd = new_node(graph, node, "Transpose", [split], {"perm": [0, 2, 1, 3]}, name="out_bhsd").outputs[0]
    replace_output(node, bhsd)
    if batch is not None or tokens is not None:  # what later passes match shapes by (None: unknown)
        fused.outputs[0].type = split.type = bhsd.type  # the canonical output's, which bhsd took over
        fused.outputs[0].shape = ir.Shape([batch, tokens, heads * v_size])
        split.shape = ir.Shape([batch, tokens, heads, v_size])
        bhsd.shape = ir.Shape([batch, heads, tokens, v_size])
    return fused


def _attention(model: ir.Model, node: ir.Node, positions: int | None, query_seqlens: bool) -> Fused:
    graph = model.graph
    heads, size, v_size = attr(node, "q_num_heads", 0), attr(node, "head_size", 0), attr(node, "v_head_size", 0)
    ensure_opset(model, MS_DOMAIN, 1)
    grouped = _group_query_attention(model, node, positions, query_seqlens)
    if grouped is not None:
        return grouped
    node = concatenate_cache(graph, node)
    key4, value4 = kv_for_all_heads(graph, node)
    query = _to_bsd(graph, node, node.inputs[0], heads, size)
    # MultiHeadAttention takes K and V both as (B, S, H*D) or both as (B, H, S, D)
    key, value = _bsd_source(key4, heads, size), _bsd_source(value4, heads, v_size)
    three_d = key is not None and value is not None
    if not three_d:
        key, value = key4, value4
    fused, form = None, "Attention (packed QKV)"
    if three_d and size == v_size:
        fused = _packed_attention(graph, node, query, key, value, heads,
                                  lambda source: _mask_bias(graph, node, source, source, 1))
    if fused is None:
        form = "MultiHeadAttention"
        qkv_bias = None
        if three_d:
            query, key, value, qkv_bias = _fold_biases(graph, node, query, key, value)
        inputs = [query, key, value, qkv_bias, None, _mask_bias(graph, node, query, key, 1 if three_d else 2)]
        while inputs[-1] is None:
            inputs.pop()
        fused = new_node(graph, node, "MultiHeadAttention", inputs,
                         {"num_heads": heads, "scale": float(attr(node, "scale"))}, domain=MS_DOMAIN, name="mha")
    return form, _attach_output(graph, node, fused, query)


def _skip_norm(model: ir.Model, node: ir.Node, op_type: str, inputs_after_skip: list[ir.Value | None]) -> ir.Node | None:
    """norm(a + b) -> op_type(a, b, *inputs_after_skip, bias) when the Add provably does not broadcast."""
    residual = residual_add(node.inputs[0])
    if residual is None:
        return None
    ensure_opset(model, MS_DOMAIN, 1)
    inputs = [residual.a, residual.b, *inputs_after_skip, residual.bias]
    while inputs and inputs[-1] is None:
        inputs.pop()
    fused = new_node(model.graph, node, op_type, inputs, {"epsilon": float(attr(node, "epsilon", 1e-5))},
                     domain=MS_DOMAIN, num_outputs=4, name="skip_norm")
    replace_output(node, fused.outputs[0])
    if any(True for _ in residual.total.uses()) or residual.total.is_graph_output():
        # the residual stream goes on: later layers read the sum from the kernel's fourth output
        replace_value(residual.total, fused.outputs[3])
    for value in fused.outputs[1:]:
        if not any(True for _ in value.uses()) and not value.is_graph_output():
            # an omitted output: a named one is computed and written by the kernel (mean and inverse std dev
            # per row; the sum after the last layer) even when nothing reads it
            value.name = ""
    return fused


def _norm(model: ir.Model, node: ir.Node, op_type: str, skip_inputs: list[ir.Value | None]) -> Fused:
    fused = _skip_norm(model, node, f"Skip{op_type}", skip_inputs)
    if fused is not None:
        return f"Skip{op_type}", fused
    # LayerNormalization and SimplifiedLayerNormalization are ONNX Runtime kernels in the default domain
    fused = new_node(model.graph, node, op_type, list(node.inputs),
                     {"axis": -1, "epsilon": float(attr(node, "epsilon", 1e-5))}, name="norm")
    replace_output(node, fused.outputs[0])
    return op_type, fused


def _flat_rotary_caches(graph: ir.Graph, node: ir.Node, cos: ir.Value, sin: ir.Value, rotary_dim: int,
                        x: ir.Value) -> list[ir.Value]:
    """ONNX Runtime's rotary kernels look caches up by position id: the (B', S) rows of the model's
    (B', 1, S, D) cos and sin flattened to (B' * S, D / 2), and each of x's tokens given the index of its
    own row as its position. Returns [cos_cache, sin_cache, position_ids (B, S)]."""
    half = rotary_dim // 2
    flat = add_constant(graph, np.array([-1, half], dtype=np.int64), f"{node.name}_flat")
    caches = [new_node(graph, node, "Reshape", [half_cache(graph, node, t, half, n), flat], name=f"{n}_2d").outputs[0]
              for t, n in ((cos, "cos"), (sin, "sin"))]
    rows = new_node(graph, node, "Shape", [caches[0]], {"start": 0, "end": 1}, name="rows").outputs[0]
    zero = add_constant(graph, np.array(0, dtype=np.int64), f"{node.name}_i0")
    step = add_constant(graph, np.array(1, dtype=np.int64), f"{node.name}_i1")
    first = add_constant(graph, np.array([0], dtype=np.int64), f"{node.name}_squeeze0")
    count = new_node(graph, node, "Squeeze", [rows, first], name="rows_scalar").outputs[0]
    ids = new_node(graph, node, "Range", [zero, count, step], name="ids").outputs[0]
    table_rows = new_node(graph, node, "Shape", [cos], {"start": 0, "end": 1}, name="cache_batch").outputs[0]
    minus = add_constant(graph, np.array([-1], dtype=np.int64), f"{node.name}_minus1")
    by_row = new_node(graph, node, "Concat", [table_rows, minus], {"axis": 0}, name="ids_shape").outputs[0]
    ids = new_node(graph, node, "Reshape", [ids, by_row], name="ids_2d").outputs[0]
    xb = new_node(graph, node, "Shape", [x], {"start": 0, "end": 1}, name="x_batch").outputs[0]
    one = add_constant(graph, np.array([1], dtype=np.int64), f"{node.name}_one")
    target = new_node(graph, node, "Concat", [xb, one], {"axis": 0}, name="pos_shape").outputs[0]
    positions = new_node(graph, node, "Expand", [ids, target], name="position_ids").outputs[0]
    return [*caches, positions]


def _rotary(model: ir.Model, node: ir.Node, positions: int | None) -> Fused:
    graph = model.graph
    ensure_opset(model, MS_DOMAIN, 1)
    x, cos, sin = node.inputs
    rotary_dim = attr(node, "rotary_dim", 0)
    tables = _tables_by_position(model, cos, sin, rotary_dim, positions)
    cos_cache, sin_cache, ids = tables or _flat_rotary_caches(graph, node, cos, sin, rotary_dim, x)
    fused = new_node(graph, node, "RotaryEmbedding", [x, ids, cos_cache, sin_cache], domain=MS_DOMAIN,
                     name="rotary")
    replace_output(node, fused.outputs[0])
    return "RotaryEmbedding (contrib)", fused


def _gelu(model: ir.Model, node: ir.Node) -> Fused:
    ensure_opset(model, MS_DOMAIN, 1)
    op = "FastGelu" if attr(node, "approximate", "none") == "tanh" else "Gelu"
    inputs, form = [node.inputs[0]], op
    bias = added_bias(node.inputs[0])
    if bias is not None:  # the bias Add goes into the kernel; the Add is left dead
        inputs, op = list(bias), "BiasGelu" if op == "Gelu" else "FastGelu"
        form = f"{op} (bias folded)"
    fused = new_node(model.graph, node, op, inputs, domain=MS_DOMAIN, name="gelu")
    replace_output(node, fused.outputs[0])
    return form, fused


#: the onnxruntime release whose GroupQueryAttention first takes query_seqlens (its input 16)
QUERY_SEQLENS_SINCE = (1, 32)


def query_seqlens_for(version: str | None) -> bool | None:
    """Whether an ort graph for onnxruntime `version` ("1.31", "1.32.0") may name query_seqlens; None for no
    version (the installed onnxruntime decides)."""
    if version is None:
        return None
    parts = version.strip().split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise AttnoptError(f"onnxruntime version {version!r} is not MAJOR.MINOR or MAJOR.MINOR.PATCH",
                           "for example --onnxruntime-version 1.31")
    return tuple(int(p) for p in parts[:2]) >= QUERY_SEQLENS_SINCE


class OrtLowering(Lowering):
    """`positions`: the model's context length, where known: rotary tables by position then cover it.
    `query_seqlens`: whether GroupQueryAttention gets that input (onnxruntime >= 1.32), with which it runs
    several new tokens on a past for a batch of many rows and rotates every token by its own position id
    (rotary goes inside it); by default, whether the installed onnxruntime knows that input (a node naming
    it does not load in one that does not)."""

    target = "ort"
    min_opset = {"LayerNormalization": 17}

    def __init__(self, positions: int | None = None, query_seqlens: bool | None = None) -> None:
        self.positions = positions
        if query_seqlens is None:
            known = contrib_op_inputs("GroupQueryAttention")
            query_seqlens = known is None or "query_seqlens" in known
        self.query_seqlens = self.batched_chunks = query_seqlens

    def describe(self) -> dict[str, Any]:
        return {"group_query_attention": ("where written: with query_seqlens (needs onnxruntime >= 1.32), rotary "
                "inside, batched chunks on a past" if self.query_seqlens else "where written: without query_seqlens "
                "(for onnxruntime < 1.32), rotary outside, a chunk of several new tokens on a past runs at batch 1 "
                "only") + "; ONNX Runtime's CUDA kernel takes fp16/bf16 only (an fp32 one runs on the CPU): for a GPU, "
                "quantize this graph with --precision fp16 (which keeps its KV cache fp16 at the graph's edges too)"}

    def veto(self, op_type: str, attributes: dict, model: ir.Model, inputs: Sequence[ir.Value | None] = ()) -> str:
        if op_type == "Attention" and not all(attributes.get(k) for k in ("q_num_heads", "head_size", "v_head_size")):
            return "head count or head size not static: MultiHeadAttention needs them"
        if op_type == "Attention" and attributes.get("softcap") and not _takes_group_query(attributes, inputs):
            return "soft-capped scores: of ONNX Runtime's attention kernels only GroupQueryAttention caps them, " \
                   "and it needs a KV cache and a mask"
        return super().veto(op_type, attributes, model, inputs)

    def attention(self, model: ir.Model, node: ir.Node) -> Fused:
        return _attention(model, node, self.positions, self.query_seqlens)

    def rotary(self, model: ir.Model, node: ir.Node) -> Fused:
        return _rotary(model, node, self.positions)

    gelu = staticmethod(_gelu)

    @staticmethod
    def layernorm(model: ir.Model, node: ir.Node) -> Fused:
        beta = node.inputs[2] if len(node.inputs) > 2 else None
        return _norm(model, node, "LayerNormalization", [node.inputs[1], beta])

    @staticmethod
    def rmsnorm(model: ir.Model, node: ir.Node) -> Fused:
        return _norm(model, node, "SimplifiedLayerNormalization", [node.inputs[1]])
