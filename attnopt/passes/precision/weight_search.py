"""Importance-weighted search of 4-bit block codes for MatMulNBits: per block of a weight's inner axis, the
scale and integer zero point (or the scale alone, symmetric) that minimise sum_i a_i (w_i - s (q_i - z))^2,
where a_i, the importance of input channel i, is the mean of x_i^2 over the MatMul's input activations on
the calibration data. The result is plain MatMulNBits (uint8 codes, fp32 scales, packed uint8 zero points):
the same ops and kernel as round-to-nearest, better values.

The search, vectorised over every block of a weight, a few hundred blocks at a time; every candidate (s, z)
is scored at its own least-squares scale (see _Blocks), and a block keeps the best:
1. a grid of candidate ranges, the block's range (including 0, which an integer zero point always
   represents) shrunk around its centre by each factor of SHRINK;
2. REFINE rounds from the best so far: its scale with its zero point and the two neighbours.
Symmetric (zero point 8, as MatMulNBits reads a missing one): the scale may be negative so the wider side
holds the 8th level; the grid shrinks the largest magnitude on either side, the rounds refit the scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: 4 bits: codes 0..15; a symmetric block's implicit zero point (MatMulNBits' default for 4 bits)
LEVELS = 15
SYMMETRIC_ZERO = 8
#: fractions of the block's range tried as the quantization range
SHRINK = np.linspace(0.5, 1.1, 25, dtype=np.float32)
REFINE = 2
#: weight values searched at once (half a MB of fp32, to stay in cache): as many output rows (of N) as
#: hold that many, so a short weight (GPTQ searches one block of rows at a time) is not cut into calls of
#: a few thousand values each, where numpy's per-call cost would dominate
CHUNK_VALUES = 1 << 17
#: importance floor, relative to a block's mean, so a channel never seen active still counts a little
FLOOR = 1e-3


def weighted_error(weight: np.ndarray, importance: np.ndarray | None, block_size: int, codes: np.ndarray,
                   scales: np.ndarray, zeros: np.ndarray | None) -> float:
    """sum over [K, N] of importance[k] (weight - dequantized)^2, for codes [N, K/block, block]."""
    k = weight.shape[0]
    diff = dequantize(codes, scales, zeros) - weight
    a = np.ones(k, np.float64) if importance is None else importance.astype(np.float64)
    return float((a[:, None] * diff.astype(np.float64) ** 2).sum())


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> np.ndarray:
    """Codes [N, K/block, block], scales [N, K/block], zero points [N, K/block] (None: symmetric) -> [K, N]."""
    zero = np.full(scales.shape, SYMMETRIC_ZERO, np.float32) if zeros is None else zeros.astype(np.float32)
    values = (codes.astype(np.float32) - zero[..., None]) * scales[..., None]
    n = codes.shape[0]
    return np.ascontiguousarray(values.reshape(n, -1).T)


def search_blocks(weight: np.ndarray, importance: np.ndarray | None, block_size: int,
                  symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A [K, N] fp32 weight as 4-bit blocks along K: codes [N, K/block, block] uint8, scales [N, K/block]
    fp32 and zero points [N, K/block] uint8 (None when symmetric), searched to minimise the importance-weighted
    squared error (importance [K], None: every channel alike)."""
    k, n = weight.shape
    blocks = k // block_size
    w = np.ascontiguousarray(weight.T, dtype=np.float32).reshape(n, blocks, block_size)
    a = _block_importance(importance, k, blocks, block_size)
    codes = np.empty(w.shape, np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zeros = np.empty((n, blocks), np.float32)
    per_chunk = max(1, CHUNK_VALUES // (blocks * block_size))
    buffers = np.empty((2, min(per_chunk, n), blocks, block_size), np.float32)
    search = _search_symmetric if symmetric else _search_asymmetric
    for start in range(0, n, per_chunk):
        rows = slice(start, min(start + per_chunk, n))
        buffer, weighted = buffers[:, :rows.stop - start]
        s, z = search(w[rows], a, buffer, weighted)
        scales[rows], zeros[rows] = s, z
        codes[rows] = _codes(w[rows], 1 / s, z, buffer)
    return codes, scales, None if symmetric else zeros.astype(np.uint8)


def _block_importance(importance: np.ndarray | None, k: int, blocks: int, block_size: int) -> np.ndarray:
    if importance is None:
        return np.ones((1, blocks, block_size), np.float32)
    a = np.asarray(importance, np.float64).reshape(blocks, block_size)
    if a.shape[0] * block_size != k or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("importance must be [K] finite, non-negative")
    mean = a.mean(-1, keepdims=True)
    a = np.where(mean > 0, a / np.where(mean > 0, mean, 1), 1.0)  # each block's mean 1: only shares matter
    return np.maximum(a, FLOOR).astype(np.float32)[None]


def _codes(w: np.ndarray, inv: np.ndarray, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """clip(round(w / s) + z, 0, 15) in `out` (the codes that minimise the error for this s and z)."""
    np.multiply(w, inv[..., None], out=out)
    np.rint(out, out=out)
    out += z[..., None]
    return np.clip(out, 0, LEVELS, out=out)


class _Blocks:
    """The blocks of some rows of a weight, their importance, and the best (scale, zero point) found so far.

    A candidate (s, z) is scored with its best codes d = clip(round(w/s) + z, 0, 15) - z and, for those
    codes, the least-squares scale s* = sum a d w / sum a d^2, whose error is sum a w^2 - (sum a d w)^2 /
    sum a d^2: every candidate is kept at its own optimal scale, at the cost of one pass of rounding."""

    def __init__(self, w: np.ndarray, a: np.ndarray, buffer: np.ndarray, weighted: np.ndarray,
                 symmetric: bool = False) -> None:
        self.w, self.a, self.d, self.ad = w, a, buffer, weighted
        self.symmetric = symmetric  # z is SYMMETRIC_ZERO throughout: d = clip(round(w/s), -8, 7) in one pass less
        self.energy = np.einsum("...i,...i->...", a * w, w)
        self.error = np.full(w.shape[:-1], np.inf, np.float32)
        self.scale = np.ones(w.shape[:-1], np.float32)
        self.zero = np.zeros(w.shape[:-1], np.float32)

    def try_(self, s: np.ndarray, z: np.ndarray) -> None:
        if self.symmetric:  # z is SYMMETRIC_ZERO throughout (the symmetric search never moves it)
            d = np.rint(np.multiply(self.w, (1 / s)[..., None], out=self.d), out=self.d)
            np.clip(d, -SYMMETRIC_ZERO, LEVELS - SYMMETRIC_ZERO, out=d)
        else:
            d = _codes(self.w, 1 / s, z, self.d)
            d -= z[..., None]
        np.multiply(self.a, d, out=self.ad)
        norm = np.einsum("...i,...i->...", self.ad, d)
        dot = np.einsum("...i,...i->...", self.ad, self.w)
        fit = np.where(norm > 0, dot / np.where(norm > 0, norm, 1), 0)
        scale = np.where(np.isfinite(fit) & (np.abs(fit) > 1e-30), fit, s)
        error = np.where(norm > 0, self.energy - dot * fit, self.energy)
        better = error < self.error
        self.error[better], self.scale[better], self.zero[better] = error[better], scale[better], z[better]


def _search_asymmetric(w: np.ndarray, a: np.ndarray, buffer: np.ndarray, weighted: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
    span, centre = hi - lo, (hi + lo) / 2
    unit = np.where(span > 0, span / LEVELS, 1).astype(np.float32)
    blocks = _Blocks(w, a, buffer, weighted)
    blocks.scale[:] = unit
    for factor in SHRINK:
        s = unit * factor
        blocks.try_(s, np.clip(np.rint(LEVELS / 2 - centre / s), 0, LEVELS))
    for _ in range(REFINE):  # the codes of the best scale, then its zero point and neighbours at their own scale
        s, z = blocks.scale.copy(), blocks.zero.copy()
        for step in (0, -1, 1):
            blocks.try_(s, np.clip(z + step, 0, LEVELS))
    return blocks.scale, blocks.zero


def _search_symmetric(w: np.ndarray, a: np.ndarray, buffer: np.ndarray, weighted: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]
    unit = np.where(peak != 0, peak / -SYMMETRIC_ZERO, 1).astype(np.float32)  # the peak on code 0 (-8)
    z = np.full(unit.shape, SYMMETRIC_ZERO, np.float32)
    blocks = _Blocks(w, a, buffer, weighted, symmetric=True)
    blocks.scale[:], blocks.zero[:] = unit, z
    for factor in SHRINK:  # the peak on the -8 side, or (scale negated) on the +7 side
        blocks.try_(unit * factor, z)
        blocks.try_(unit * (-factor * SYMMETRIC_ZERO / (LEVELS - SYMMETRIC_ZERO)), z)
    for _ in range(REFINE):
        blocks.try_(blocks.scale.copy(), z)
    return blocks.scale, z


def input_importance(model: Path, nodes: list[str], feeds: list[dict[str, np.ndarray]],
                     second_moment: bool = False) -> dict[str, np.ndarray]:
    """Mean of x^2 per input channel of each MatMul in `nodes` (name -> [K]), over the calibration feeds'
    tokens (padding left out where the activation is [batch, seq, K] and the feed has an attention mask);
    with `second_moment`, the whole E[x xᵀ] (name -> [K, K]; nodes reading one tensor share one array)."""
    import onnx

    from attnopt.passes.precision.calibration import activation_rows

    graph = onnx.load(str(model), load_external_data=False).graph
    wanted = {n.name: n.input[0] for n in graph.node if n.name in set(nodes)}
    del graph
    tensors = sorted(set(wanted.values()))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, float] = {}
    for rows_of in activation_rows(model, tensors, feeds):
        for tensor, rows in rows_of.items():
            rows = rows.astype(np.float64)
            sums[tensor] = sums.get(tensor, 0) + (rows.T @ rows if second_moment else (rows * rows).sum(0))
            counts[tensor] = counts.get(tensor, 0) + rows.shape[0]
    means = {t: (sums[t] / max(counts[t], 1)).astype(np.float32) for t in tensors}
    return {name: means[t] for name, t in wanted.items()}
