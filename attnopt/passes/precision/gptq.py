"""GPTQ for MatMulNBits' 4-bit blocks: a weight's rows (its inner axis K, the MatMul's input channels) are
quantized one at a time, and each row's rounding error is pushed onto the rows not yet quantized, weighted
by the inverse of the input's second moment H = E[x xᵀ] on the calibration data, so that the layer's output
x W, not W itself, stays close (Frantar et al., "GPTQ", 2022). Each block of `block_size` rows gets its scale
(and zero point, asymmetric) from weight_search's importance-weighted search at the moment the block starts,
on the rows as the earlier errors have left them. The output is plain MatMulNBits: round-to-nearest's ops and
kernel, values that keep more of the model."""

from __future__ import annotations

import numpy as np

from attnopt.passes.precision.weight_search import LEVELS, SYMMETRIC_ZERO, search_blocks

#: added to H's diagonal, relative to its mean: a calibration text has fewer tokens than the wide layers have
#: input channels, so H alone is singular and fits the text too closely. GPTQ's usual 0.01 is for thousands of
#: tokens; on 32 sentences (SmolLM2-135M, every weight 4-bit, held-out text) 0.01 gave top-1 0.70, KL 0.19,
#: perplexity 79.5; 0.1: 0.73, 0.14, 76.8; 0.3: 0.74, 0.15, 74.4 (mse: 0.68, 0.23, 73.7)
DAMPING = 0.1
#: rows whose errors are applied to the rest of the weight in one matrix product (the lazy batch)
BATCH = 128


def gptq_blocks(weight: np.ndarray, second_moment: np.ndarray, block_size: int, symmetric: bool,
                damping: float = DAMPING, factors: FactorCache | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A [K, N] fp32 weight and its input's [K, K] second moment -> codes [N, K/block, block] uint8, scales
    [N, K/block] fp32 and zero points [N, K/block] uint8 (None when symmetric), MatMulNBits' blocks along K.
    `factors`: where a pass keeps the last H⁻¹ factor for the next weight that reads the same input."""
    k, n = weight.shape
    if second_moment.shape != (k, k) or k % block_size:
        raise ValueError(f"a [{k}, {n}] weight needs a [{k}, {k}] second moment and blocks dividing {k}")
    batch = block_size * max(1, BATCH // block_size)  # whole blocks
    w = np.array(weight, np.float32)
    upper, dead = (factors or FactorCache()).get(second_moment, damping)
    w[dead] = 0.0
    blocks = k // block_size
    codes = np.empty((n, blocks, block_size), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zeros = np.empty((n, blocks), np.float32)
    importance = np.diag(second_moment).astype(np.float32)
    for start in range(0, k, batch):
        stop = min(start + batch, k)
        errors = np.empty((stop - start, n), np.float32)
        for row in range(start, stop):
            block, offset = divmod(row, block_size)
            if offset == 0:  # the block's scale from the rows as the earlier errors left them
                _, s, z = search_blocks(w[row:row + block_size], importance[row:row + block_size], block_size,
                                        symmetric)
                scales[:, block] = s[:, 0]
                zeros[:, block] = SYMMETRIC_ZERO if z is None else z[:, 0]
            s, z = scales[:, block], zeros[:, block]
            q = np.clip(np.rint(w[row] / s) + z, 0, LEVELS)
            codes[:, block, offset] = q
            error = (w[row] - (q - z) * s) / upper[row, row]
            w[row + 1:stop] -= np.outer(upper[row, row + 1:stop], error)
            errors[row - start] = error
        w[stop:] -= upper[start:stop, stop:].T @ errors
    return codes, scales, None if symmetric else zeros.astype(np.uint8)


class FactorCache:
    """The last second moment factored, with its (U, dead channels): the MatMuls that read one tensor (Q, K and
    V; gate and up) share one second-moment array and come one after another in a quantization pass. One entry:
    a pass holds one factor at a time, and drops it with the cache."""

    def __init__(self) -> None:
        self.source: tuple[np.ndarray, float] | None = None
        self.factor: tuple[np.ndarray, np.ndarray] | None = None

    def get(self, second_moment: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
        if self.source is None or self.source[0] is not second_moment or self.source[1] != damping:
            self.source, self.factor = (second_moment, damping), _inverse_factor(second_moment, damping)
        return self.factor


def _inverse_factor(second_moment: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U), H damped, and the input channels never active (H = 1
    there; their weight rows are zeroed: nothing reaches them, so their rows cost nothing)."""
    h = np.array(second_moment, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    mean = np.mean(np.diag(h))
    for attempt in range(4):  # rounding can leave a damped H just short of positive definite: damp more
        try:
            damped = h + np.eye(len(h)) * damping * 10 ** attempt * mean
            # with J the reversal, J H J = R Rᵀ (R lower) gives H⁻¹ = Uᵀ U for U = J R⁻¹ J, upper triangular:
            # one factorisation and one inverse
            lower = np.linalg.cholesky(damped[::-1, ::-1])
            return np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1], dtype=np.float32), dead
        except np.linalg.LinAlgError:
            continue
    raise ValueError("the input's second moment is not positive definite, even damped")
