"""Tiny hand-written graphs in ONNX text format, one per way of writing each computation."""

from __future__ import annotations

import onnx
import onnx.parser

HEADER = '<ir_version: 10, opset_import: ["" : {opset}]>'


def parse(text: str, opset: int = 22) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER.format(opset=opset) + text)
    onnx.checker.check_model(model, full_check=True)
    return model


# softmax(QKᵀ / sqrt(d) + mask) V: scale by Div on the scores, Kᵀ by Transpose, additive float mask,
# heads split by Reshape+Transpose and merged back.
ATTENTION_DIV_ADDMASK = """
agraph (float[B, S, 16] q_in, float[B, S, 16] k_in, float[B, S, 16] v_in, float[B, 1, 1, S] mask) => (float[B, S, 16] out) {
    shape4 = Constant <value = int64[4] {0, 0, 2, 8}> ()
    shape3 = Constant <value = int64[3] {0, 0, 16}> ()
    q4 = Reshape (q_in, shape4)
    k4 = Reshape (k_in, shape4)
    v4 = Reshape (v_in, shape4)
    q = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 3, 1]> (k4)
    v = Transpose <perm = [0, 2, 1, 3]> (v4)
    scores = MatMul (q, kt)
    root = Constant <value = float {2.828427}> ()
    scaled = Div (scores, root)
    masked = Add (scaled, mask)
    probs = Softmax <axis = -1> (masked)
    ctx = MatMul (probs, v)
    ctx_t = Transpose <perm = [0, 2, 1, 3]> (ctx)
    out = Reshape (ctx_t, shape3)
}
"""

# sqrt of the scale on both Q and Kᵀ (torch's SDPA decomposition), a boolean mask through Where,
# and the IsNaN/Where guard after Softmax.
ATTENTION_SPLIT_SCALE_BOOLMASK = """
agraph (float[B, 2, S, 8] q, float[B, 2, S, 8] k, float[B, 2, S, 8] v, bool[B, 1, S, S] keep) => (float[B, 2, S, 8] out) {
    s = Constant <value = float {0.5946036}> ()
    qs = Mul (q, s)
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    kts = Mul (kt, s)
    scores = MatMul (qs, kts)
    fill = Constant <value = float {-inf}> ()
    masked = Where (keep, scores, fill)
    probs = Softmax <axis = -1> (masked)
    nan = IsNaN (probs)
    zero = Constant <value = float {0.0}> ()
    safe = Where (nan, zero, probs)
    out = MatMul (safe, v)
}
"""

# grouped-query attention: 4 query heads share 2 key/value heads, repeated by Unsqueeze/Expand/Reshape;
# scale by Mul on Q alone, no mask.
ATTENTION_GQA = """
agraph (float[B, 4, S, 8] q, float[B, 2, S, 8] k, float[B, 2, S, 8] v) => (float[B, 4, S, 8] out) {
    ax = Constant <value = int64[1] {2}> ()
    grow = Constant <value = int64[5] {1, 1, 2, 1, 1}> ()
    merge = Constant <value = int64[4] {0, 4, -1, 8}> ()
    ku = Unsqueeze (k, ax)
    ke = Expand (ku, grow)
    kr = Reshape (ke, merge)
    vu = Unsqueeze (v, ax)
    ve = Expand (vu, grow)
    vr = Reshape (ve, merge)
    s = Constant <value = float {0.35355339}> ()
    qs = Mul (q, s)
    kt = Transpose <perm = [0, 1, 3, 2]> (kr)
    scores = MatMul (qs, kt)
    probs = Softmax <axis = -1> (scores)
    out = MatMul (probs, vr)
}
"""

# not attention: the probabilities are also returned (output_attentions)
ATTENTION_PROBS_RETURNED = """
agraph (float[B, 2, S, 8] q, float[B, 2, S, 8] k, float[B, 2, S, 8] v) => (float[B, 2, S, 8] out, float[B, 2, S, S] probs) {
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    probs = Softmax <axis = -1> (scores)
    out = MatMul (probs, v)
}
"""

# logit soft-capping (Gemma 2): c * tanh(scaled scores / c) before the mask, no KV cache
def _softcapped(mask_inside: bool) -> str:
    capped = "masked_in = Add (scaled, mask)\n    shrunk = Div (masked_in, cap)" if mask_inside else \
        "shrunk = Div (scaled, cap)"
    masked = "masked = Identity (capped)" if mask_inside else "masked = Add (capped, mask)"
    return f"""
agraph (float[B, 2, S, 8] q, float[B, 2, S, 8] k, float[B, 2, S, 8] v, float[B, 1, S, S] mask) => (float[B, 2, S, 8] out) {{
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    scale = Constant <value = float {{0.35355339}}> ()
    scaled = Mul (scores, scale)
    cap = Constant <value = float {{5.0}}> ()
    {capped}
    squashed = Tanh (shrunk)
    capped = Mul (squashed, cap)
    {masked}
    probs = Softmax <axis = -1> (masked)
    out = MatMul (probs, v)
}}
"""


ATTENTION_SOFTCAP = _softcapped(mask_inside=False)
ATTENTION_SOFTCAP_MASK_INSIDE = _softcapped(mask_inside=True)

# not attention: softmax over the query axis
ATTENTION_WRONG_AXIS = """
agraph (float[B, 2, 5, 8] q, float[B, 2, 5, 8] k, float[B, 2, 5, 8] v) => (float[B, 2, 5, 8] out) {
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    probs = Softmax <axis = 2> (scores)
    out = MatMul (probs, v)
}
"""

LAYERNORM_POW_DIV = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    axes = Constant <value = int64[1] {-1}> ()
    mean = ReduceMean (x, axes)
    d = Sub (x, mean)
    two = Constant <value = float {2.0}> ()
    sq = Pow (d, two)
    var = ReduceMean (sq, axes)
    eps = Constant <value = float {1e-12}> ()
    ve = Add (var, eps)
    std = Sqrt (ve)
    n = Div (d, std)
    gamma = Constant <value = float[16] {1.5, 0.5, 1, 2, 1, 1, 0.25, 1, 1, 3, 1, 1, 1, 0.75, 1, 1}> ()
    beta = Constant <value = float[16] {0.1, 0, 0, 0, 0.2, 0, 0, 0, 0, 0, -0.3, 0, 0, 0, 0, 0.05}> ()
    g = Mul (n, gamma)
    y = Add (g, beta)
}
"""

# d*d, Reciprocal, epsilon added on the left, no affine
LAYERNORM_MUL_RECIPROCAL = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    axes = Constant <value = int64[1] {2}> ()
    mean = ReduceMean (x, axes)
    d = Sub (x, mean)
    sq = Mul (d, d)
    var = ReduceMean (sq, axes)
    eps = Constant <value = float {1e-5}> ()
    ve = Add (eps, var)
    std = Sqrt (ve)
    inv = Reciprocal (std)
    y = Mul (d, inv)
}
"""

LAYERNORM_WRONG_AXIS = """
agraph (float[B, 6, 16] x) => (float[B, 6, 16] y) {
    axes = Constant <value = int64[1] {1}> ()
    mean = ReduceMean (x, axes)
    d = Sub (x, mean)
    sq = Mul (d, d)
    var = ReduceMean (sq, axes)
    eps = Constant <value = float {1e-5}> ()
    ve = Add (var, eps)
    std = Sqrt (ve)
    y = Div (d, std)
}
"""

GELU_ERF_DIV = """
agraph (float[B, S, 16] h) => (float[B, S, 16] y) {
    b = Constant <value = float[16] {0.1, 0, 0, 0, 0.2, 0, 0, 0, 0, 0, -0.3, 0, 0, 0, 0, 0.05}> ()
    x = Add (h, b)
    r2 = Constant <value = float {1.4142135}> ()
    xs = Div (x, r2)
    e = Erf (xs)
    one = Constant <value = float {1.0}> ()
    e1 = Add (e, one)
    xe = Mul (x, e1)
    half = Constant <value = float {0.5}> ()
    y = Mul (xe, half)
}
"""

GELU_ERF_MUL_HALF_FIRST = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    c = Constant <value = float {0.70710678}> ()
    xs = Mul (c, x)
    e = Erf (xs)
    one = Constant <value = float {1.0}> ()
    e1 = Add (one, e)
    half = Constant <value = float {0.5}> ()
    xh = Mul (half, x)
    y = Mul (xh, e1)
}
"""

GELU_TANH_POW = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    three = Constant <value = float {3.0}> ()
    cube = Pow (x, three)
    k = Constant <value = float {0.044715}> ()
    kc = Mul (k, cube)
    inner = Add (x, kc)
    c = Constant <value = float {0.7978845608}> ()
    arg = Mul (c, inner)
    t = Tanh (arg)
    one = Constant <value = float {1.0}> ()
    t1 = Add (one, t)
    half = Constant <value = float {0.5}> ()
    xh = Mul (half, x)
    y = Mul (xh, t1)
}
"""

GELU_WRONG_HALF = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    c = Constant <value = float {0.70710678}> ()
    xs = Mul (x, c)
    e = Erf (xs)
    one = Constant <value = float {1.0}> ()
    e1 = Add (e, one)
    xe = Mul (x, e1)
    k = Constant <value = float {0.6}> ()
    y = Mul (xe, k)
}
"""

RMSNORM_RECIPROCAL = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    two = Constant <value = float {2.0}> ()
    sq = Pow (x, two)
    axes = Constant <value = int64[1] {-1}> ()
    ms = ReduceMean (sq, axes)
    eps = Constant <value = float {1e-6}> ()
    me = Add (ms, eps)
    r = Sqrt (me)
    inv = Reciprocal (r)
    n = Mul (x, inv)
    w = Constant <value = float[16] {1.5, 0.5, 1, 2, 1, 1, 0.25, 1, 1, 3, 1, 1, 1, 0.75, 1, 1}> ()
    y = Mul (w, n)
}
"""

RMSNORM_DIV = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    sq = Mul (x, x)
    axes = Constant <value = int64[1] {-1}> ()
    ms = ReduceMean (sq, axes)
    eps = Constant <value = float {1e-5}> ()
    me = Add (ms, eps)
    r = Sqrt (me)
    n = Div (x, r)
    w = Constant <value = float[16] {1.5, 0.5, 1, 2, 1, 1, 0.25, 1, 1, 3, 1, 1, 1, 0.75, 1, 1}> ()
    y = Mul (n, w)
}
"""

RMSNORM_NO_EPSILON = """
agraph (float[B, S, 16] x) => (float[B, S, 16] y) {
    sq = Mul (x, x)
    axes = Constant <value = int64[1] {-1}> ()
    ms = ReduceMean (sq, axes)
    r = Sqrt (ms)
    n = Div (x, r)
    w = Constant <value = float[16] {1.5, 0.5, 1, 2, 1, 1, 0.25, 1, 1, 3, 1, 1, 1, 0.75, 1, 1}> ()
    y = Mul (n, w)
}
"""

def _rotary(split: int, computed_tables: bool) -> str:
    """Rotate-half rotary embedding on (B, 2, S, 8): x * cos + concat(-x2, x1) * sin, split at `split`;
    cos/sin either computed from cat(freqs, freqs) as models do, or given as opaque inputs."""
    if computed_tables:
        inputs = "float[B, 2, S, 8] x, float[1, S, 4] freqs"
        tables = """
    emb = Concat <axis = -1> (freqs, freqs)
    c = Cos (emb)
    s = Sin (emb)
    one = Constant <value = int64[1] {1}> ()
    cos = Unsqueeze (c, one)
    sin = Unsqueeze (s, one)"""
    else:
        inputs, tables = "float[B, 2, S, 8] x, float[1, 1, S, 8] cos, float[1, 1, S, 8] sin", ""
    return f"""
agraph ({inputs}) => (float[B, 2, S, 8] y) {{{tables}
    zero = Constant <value = int64[1] {{0}}> ()
    half = Constant <value = int64[1] {{{split}}}> ()
    end = Constant <value = int64[1] {{9223372036854775807}}> ()
    last = Constant <value = int64[1] {{-1}}> ()
    x1 = Slice (x, zero, half, last)
    x2 = Slice (x, half, end, last)
    nx2 = Neg (x2)
    rot = Concat <axis = -1> (nx2, x1)
    a = Mul (x, cos)
    b = Mul (rot, sin)
    y = Add (a, b)
}}
"""


ROTARY_ROTATE_HALF = _rotary(4, computed_tables=True)
# not rotary: the slices do not split the head in halves
ROTARY_UNEVEN = _rotary(3, computed_tables=True)
# not provably rotary: cos and sin come in from outside, so nothing says their halves repeat
ROTARY_OPAQUE_TABLES = _rotary(4, computed_tables=False)

# self-attention over three projections (MatMul + bias) of one input: ONNX Runtime's packed Attention
ATTENTION_PROJECTIONS = """
agraph (float[B, S, 8] x, float[B, 1, 1, S] mask) => (float[B, S, 8] out) {
    wq = Constant <value = float[8, 8] {0.025, -0.026, 0.128, 0.021, -0.107, 0.072, 0.261, 0.189, -0.141, -0.253, -0.125, 0.008, -0.465, -0.044, -0.249, -0.146, -0.109, -0.063, 0.082, 0.209, -0.026, 0.273, -0.133, 0.07, 0.181, 0.019, -0.149, -0.184, -0.092, 0.044, -0.202, -0.042, -0.032, 0.108, 0.043, 0.071, -0.131, -0.026, 0.157, 0.299, -0.252, 0.303, 0.269, 0.156, 0.053, -0.063, 0.292, 0.392, 0.36, 0.263, 0.071, -0.242, -0.001, 0.131, -0.258, 0.079, 0.086, 0.139, -0.237, -0.132, -0.087, -0.234, 0.348, -0.099}> ()
    wk = Constant <value = float[8, 8] {0.066, -0.052, 0.317, 0.264, 0.127, -0.441, 0.01, 0.137, 0.201, -0.124, 0.364, -0.264, -0.132, 0.187, 0.01, 0.4, 0.038, -0.127, -0.076, -0.218, -0.256, 0.126, 0.116, 0.259, -0.151, 0.338, -0.057, 0.315, -0.087, -0.147, 0.05, 0.206, 0.032, -0.117, -0.268, -0.28, 0.101, 0.198, -0.033, -0.215, 0.175, -0.256, -0.143, 0.124, -0.45, 0.077, -0.116, 0.022, -0.015, 0.04, 0.139, -0.152, 0.284, 0.145, 0.169, 0.233, 0.158, 0.169, 0.015, -0.285, -0.027, -0.154, -0.285, 0.052}> ()
    wv = Constant <value = float[8, 8] {-0.114, -0.206, -0.209, 0.054, 0.072, 0.264, -0.003, 0.208, 0.28, 0.23, -0.473, 0.246, 0.068, 0.085, 0.074, 0.077, 0.064, -0.072, -0.38, -0.022, -0.161, 0.216, -0.058, 0.017, -0.17, -0.102, -0.002, -0.297, 0.06, -0.021, -0.237, -0.48, 0.103, -0.06, -0.106, -0.047, 0.363, -0.01, 0.017, -0.297, 0.329, 0.183, 0.213, 0.01, 0.183, 0.074, 0.123, -0.03, -0.295, 0.206, -0.387, -0.048, -0.041, -0.209, 0.123, -0.04, -0.087, 0.104, -0.095, 0.278, 0.07, -0.095, -0.389, -0.262}> ()
    bq = Constant <value = float[8] {0.217, -0.01, -0.057, 0.329, -0.257, -0.117, -0.095, 0.117}> ()
    bk = Constant <value = float[8] {-0.133, -0.123, -0.321, 0.146, 0.161, -0.095, 0.033, -0.259}> ()
    bv = Constant <value = float[8] {-0.094, 0.276, 0.027, 0.462, -0.157, 0.116, -0.039, 0.113}> ()
    qm = MatMul (x, wq)
    q_in = Add (qm, bq)
    km = MatMul (x, wk)
    k_in = Add (km, bk)
    vm = MatMul (x, wv)
    v_in = Add (vm, bv)
    shape4 = Constant <value = int64[4] {0, 0, 2, 4}> ()
    shape3 = Constant <value = int64[3] {0, 0, 8}> ()
    q4 = Reshape (q_in, shape4)
    k4 = Reshape (k_in, shape4)
    v4 = Reshape (v_in, shape4)
    q = Transpose <perm = [0, 2, 1, 3]> (q4)
    k = Transpose <perm = [0, 2, 1, 3]> (k4)
    v = Transpose <perm = [0, 2, 1, 3]> (v4)
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    s = Constant <value = float {0.5}> ()
    scaled = Mul (scores, s)
    masked = Add (scaled, mask)
    probs = Softmax <axis = -1> (masked)
    ctx = MatMul (probs, v)
    ctx_t = Transpose <perm = [0, 2, 1, 3]> (ctx)
    out = Reshape (ctx_t, shape3)
}
"""

# grouped-query attention with K/V heads repeated by Tile (K) and Concat (V): K/V stay repeated, still fused
ATTENTION_GQA_TILE_CONCAT = """
agraph (float[B, 4, S, 8] q, float[B, 2, S, 8] k, float[B, 2, S, 8] v) => (float[B, 4, S, 8] out) {
    ax = Constant <value = int64[1] {2}> ()
    reps = Constant <value = int64[5] {1, 1, 2, 1, 1}> ()
    merge = Constant <value = int64[4] {0, 4, -1, 8}> ()
    ku = Unsqueeze (k, ax)
    kt5 = Tile (ku, reps)
    kr = Reshape (kt5, merge)
    vr = Concat <axis = 1> (v, v)
    s = Constant <value = float {0.35355339}> ()
    qs = Mul (q, s)
    kt = Transpose <perm = [0, 1, 3, 2]> (kr)
    scores = MatMul (qs, kt)
    probs = Softmax <axis = -1> (scores)
    out = MatMul (probs, vr)
}
"""

# layernorm written out (ReduceMean, Pow, Sqrt: fragile in fp16) between two linears, a weight too large
# for fp16 scaled back down, and a softmax head
PRECISION_MIX = """
agraph (float[B, 4] x) => (float[B, 4] out) {
    w1 = Constant <value = float[4, 4] {0.5, -0.2, 0.1, 0.3, -0.4, 0.2, 0.6, -0.1, 0.3, 0.1, -0.5, 0.2, 0.1, -0.3, 0.2, 0.4}> ()
    big = Constant <value = float {100000.0}> ()
    small = Constant <value = float {0.00001}> ()
    h = MatMul (x, w1)
    axis = Constant <value = int64[1] {-1}> ()
    mean = ReduceMean (h, axis)
    centred = Sub (h, mean)
    two = Constant <value = float {2.0}> ()
    sq = Pow (centred, two)
    var = ReduceMean (sq, axis)
    eps = Constant <value = float {0.00001}> ()
    ve = Add (var, eps)
    sd = Sqrt (ve)
    normed = Div (centred, sd)
    scaled_up = Mul (normed, big)
    back = Mul (scaled_up, small)
    out = Softmax <axis = -1> (back)
}
"""

# a linear layer, then self-attention written as MatMul-Softmax-MatMul (the trt target's form)
LINEAR_ATTENTION = """
agraph (float[B, 2, S, 4] x) => (float[B, 2, S, 4] out) {
    w = Constant <value = float[4, 4] {0.5, -0.2, 0.1, 0.3, -0.4, 0.2, 0.6, -0.1, 0.3, 0.1, -0.5, 0.2, 0.1, -0.3, 0.2, 0.4}> ()
    h = MatMul (x, w)
    ht = Transpose <perm = [0, 1, 3, 2]> (h)
    scores = MatMul (h, ht)
    probs = Softmax <axis = -1> (scores)
    out = MatMul (probs, x)
}
"""

# Q/DQ placed wrongly for TensorRT: a Reshape between DequantizeLinear and MatMul, and a zero point of 3
QDQ_MISPLACED = """
agraph (float[2, 4] x) => (float[2, 4] out) {
    s = Constant <value = float {0.05}> ()
    z = Constant <value = int8 {3}> ()
    q = QuantizeLinear (x, s, z)
    dq = DequantizeLinear (q, s, z)
    shape = Constant <value = int64[2] {2, 4}> ()
    r = Reshape (dq, shape)
    wq = Constant <value = int8[4, 4] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}> ()
    ws = Constant <value = float {0.01}> ()
    w = DequantizeLinear (wq, ws)
    out = MatMul (r, w)
}
"""


def _linear(inner: int, outer: int) -> str:
    """x @ W with a constant (inner, outer) weight: what weight-only quantization takes."""
    values = ", ".join(f"{((i * 7) % 11 - 5) / 10:.1f}" for i in range(inner * outer))
    return f"""
agraph (float[B, S, {inner}] x) => (float[B, S, {outer}] y) {{
    w = Constant <value = float[{inner}, {outer}] {{{values}}}> ()
    y = MatMul (x, w)
}}
"""


#: an inner dimension of 48: blocks of 16 divide it, the default 32 does not
LINEAR_48 = _linear(48, 16)


#: the decoder names of the cache (the ONNX text format takes no dots in names)
CACHE_NAMES = {"past_key": "past_key_values.0.key", "past_value": "past_key_values.0.value",
               "present_key": "present.0.key", "present_value": "present.0.value"}


def cached_attention_model(masked: bool) -> onnx.ModelProto:
    model = parse(cached_attention(masked))
    for value in [*model.graph.input, *model.graph.output]:
        value.name = CACHE_NAMES.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [CACHE_NAMES.get(n, n) for n in node.input]
        node.output[:] = [CACHE_NAMES.get(n, n) for n in node.output]
    onnx.checker.check_model(model, full_check=True)
    return model


def cached_attention(masked: bool) -> str:
    """Attention over a KV cache as decoders write it: the past (a graph input) concatenated with the new
    K and V and returned as the present, 4 query heads over 2 key/value heads repeated, and (when
    `masked`) a causal mask over past + new keys, aligned to the last query, combined with the
    attention_mask's padding as a -inf fill."""
    mask_in = ", int64[batch, total_sequence_length] attention_mask" if masked else ""
    mask = """
    t = Shape <start = 1> (attention_mask)
    s = Shape <start = 2, end = 3> (q)
    zero = Constant <value = int64 {0}> ()
    one = Constant <value = int64 {1}> ()
    t0 = Squeeze (t)
    s0 = Squeeze (s)
    first = Sub (t0, s0)
    keys = Range (zero, t0, one)
    queries = Range (first, t0, one)
    ax1 = Constant <value = int64[1] {1}> ()
    ax0 = Constant <value = int64[1] {0}> ()
    qcol = Unsqueeze (queries, ax1)
    krow = Unsqueeze (keys, ax0)
    causal = LessOrEqual (krow, qcol)
    ax12 = Constant <value = int64[2] {1, 2}> ()
    real = Cast <to = 9> (attention_mask)
    pad = Unsqueeze (real, ax12)
    keep = And (causal, pad)
    fill = Constant <value = float {-inf}> ()
    nought = Constant <value = float {0.0}> ()
    bias = Where (keep, nought, fill)
    masked_scores = Add (scaled, bias)
    probs = Softmax <axis = -1> (masked_scores)""" if masked else """
    probs = Softmax <axis = -1> (scaled)"""
    return f"""
agraph (float[batch, 4, sequence_length, 8] q, float[batch, 2, sequence_length, 8] k,
        float[batch, 2, sequence_length, 8] v, float[batch, 2, past_sequence_length, 8] past_key,
        float[batch, 2, past_sequence_length, 8] past_value{mask_in})
     => (float[batch, 4, sequence_length, 8] out, float[batch, 2, total_sequence_length, 8] present_key,
         float[batch, 2, total_sequence_length, 8] present_value) {{
    present_key = Concat <axis = 2> (past_key, k)
    present_value = Concat <axis = 2> (past_value, v)
    ax = Constant <value = int64[1] {{2}}> ()
    grow = Constant <value = int64[5] {{1, 1, 2, 1, 1}}> ()
    heads = Constant <value = int64[4] {{0, 4, -1, 8}}> ()
    k5 = Unsqueeze (present_key, ax)
    v5 = Unsqueeze (present_value, ax)
    ke = Expand (k5, grow)
    ve = Expand (v5, grow)
    kr = Reshape (ke, heads)
    vr = Reshape (ve, heads)
    kt = Transpose <perm = [0, 1, 3, 2]> (kr)
    scores = MatMul (q, kt)
    root = Constant <value = float {{2.828427}}> ()
    scaled = Div (scores, root){mask}
    out = MatMul (probs, vr)
}}
"""
