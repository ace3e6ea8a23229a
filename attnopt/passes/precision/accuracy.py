"""How far a reduced-precision model's outputs are from the fp32 model's on the calibration inputs:
max/mean abs error and token-level cosine (one vector per token), both with padding left out as `attnopt
check` leaves it out, and, for embedding models, the cosine of mean-pooled sentence embeddings; and the
test of that against a tolerance. Outputs must be finite everywhere, padding included."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from attnopt.parity.padding import nonfinite_where_finite, unpadded
from attnopt.parity.tolerance import Tolerance

def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-30)
    return np.where(both_zero, 1.0, cos)


@dataclass
class Accuracy:
    max_abs: float = 0.0
    mean_abs: float = 0.0
    token_cosine: float = 1.0  # mean over tokens, worst output
    token_cosine_min: float = 1.0
    pooled_cosine: float | None = None  # mean over sentences (embedding models)
    pooled_cosine_min: float | None = None
    top1: float | None = None  # argmax agreement (logits): teacher-forced next-token agreement on text
    #: logits only: mean KL(fp32 || reduced) of the next-token distributions, and the perplexity of the
    #: inputs' own next tokens under each (when the inputs are real text, the language model's quality)
    kl: float | None = None
    perplexity: float | None = None
    perplexity_fp32: float | None = None
    finite: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 7) if isinstance(v, float) else v) for k, v in asdict(self).items() if v is not None}

    def failure(self, criteria: Tolerance) -> str:
        """Why this accuracy breaks the criteria, or '' when it holds them."""
        if not self.finite:
            return "NaN or Inf in the outputs"
        if criteria.atol is not None and self.max_abs > criteria.atol:
            return f"max abs error {self.max_abs:.3g} > {criteria.atol:g}"
        if criteria.cosine is not None:
            if self.token_cosine < criteria.cosine:
                return f"token cosine {self.token_cosine:.6f} < {criteria.cosine:g}"
            if self.pooled_cosine is not None and self.pooled_cosine < criteria.cosine:
                return f"pooled embedding cosine {self.pooled_cosine:.6f} < {criteria.cosine:g}"
        if criteria.top1 is not None and self.top1 is not None and self.top1 < criteria.top1:
            return f"top-1 agreement {self.top1:.2%} < {criteria.top1:.0%}"
        if criteria.kl is not None and self.kl is not None and self.kl > criteria.kl:
            return f"KL {self.kl:.4f} > {criteria.kl:g}"
        return ""

    @property
    def error(self) -> float:
        """One number to rank candidates by: the worst cosine distance."""
        worst = min(self.token_cosine, self.pooled_cosine if self.pooled_cosine is not None else 1.0)
        return float("inf") if not self.finite else 1.0 - worst


def _rows(out: np.ndarray, feed: dict[str, np.ndarray]) -> np.ndarray:
    """One row per token (last axis), padding positions left out as `attnopt check` leaves them out."""
    return _as_rows(unpadded(out, feed))


def _as_rows(out: np.ndarray) -> np.ndarray:
    return out.reshape(-1, out.shape[-1]) if out.ndim >= 2 else out.reshape(1, -1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


class Reference(list):
    """The fp32 outputs (one dict per feed) that a search measures dozens of candidates against, on the same
    `feeds`: what measure() derives from them alone (their logits' next-token distributions) is computed on
    first use and kept for the next measure() on those feeds."""

    def __init__(self, outputs: list[dict[str, np.ndarray]], feeds: list[dict[str, np.ndarray]]) -> None:
        super().__init__(outputs)
        self.feeds = feeds
        self.derived: dict[tuple[int, str], _ReferenceLogits] = {}


@dataclass
class _ReferenceLogits:
    """The reference side of KL and perplexity: probabilities at every real position, their sum of p log p,
    and where the following token is real too, its index and the reference's own negative log-likelihood."""

    probs: np.ndarray
    neg_entropy: float
    following: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (row, position, next token)
    nll: float

    @classmethod
    def of(cls, expected: np.ndarray, feed: dict[str, np.ndarray]) -> "_ReferenceLogits":
        following = _following(expected, feed)
        log_e = _log_probs(expected, feed, following is not None)
        rows = _rows(log_e, feed) if following is not None else log_e
        probs = np.exp(rows)
        nll = -float(log_e[following].sum()) if following is not None else 0.0
        return cls(probs, float(np.vdot(probs, rows)), following, nll)


def _following(logits: np.ndarray, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, ...] | None:
    """Where logits are given at every input position: (row, position, token) of each next-token prediction
    whose position and following token are both real (position t predicts token t + 1)."""
    ids, mask = feed.get("input_ids"), feed.get("attention_mask")
    if ids is None or logits.ndim != 3 or logits.shape[:2] != ids.shape:
        return None
    keep = np.ones(ids.shape, bool) if mask is None or mask.shape != ids.shape else mask.astype(bool)
    row, at = np.nonzero(keep[:, :-1] & keep[:, 1:])
    return row, at, ids[row, at + 1]


def _log_probs(logits: np.ndarray, feed: dict[str, np.ndarray], every_position: bool) -> np.ndarray:
    """Log-softmax at every position where logits are given per input position (perplexity reads them by
    index), else over the real rows only."""
    if not every_position:
        return _log_softmax(_rows(logits, feed))
    with np.errstate(all="ignore"):  # padding positions may hold anything; only real ones are read
        return _log_softmax(logits)


class _LogitQuality:
    """KL and perplexity over every real (unpadded) next-token prediction of logits outputs."""

    def __init__(self) -> None:
        self.kl_sum = self.nll = self.nll_fp32 = 0.0
        self.rows = self.predictions = 0

    def add(self, actual: np.ndarray, reference: _ReferenceLogits, feed: dict[str, np.ndarray]) -> None:
        every_position = reference.following is not None
        log_a = _log_probs(actual, feed, every_position)
        rows_a = _rows(log_a, feed) if every_position else log_a
        self.kl_sum += reference.neg_entropy - float(np.vdot(reference.probs, rows_a))
        self.rows += len(rows_a)
        if reference.following is not None:
            self.nll -= float(log_a[reference.following].sum())
            self.nll_fp32 += reference.nll
            self.predictions += len(reference.following[0])

    def finish(self, acc: "Accuracy") -> None:
        if self.rows:
            acc.kl = self.kl_sum / self.rows
        if self.predictions:
            acc.perplexity = float(np.exp(self.nll / self.predictions))
            acc.perplexity_fp32 = float(np.exp(self.nll_fp32 / self.predictions))


def _pooled(out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(np.float64)[..., None]
    return (out * weights).sum(1) / np.maximum(weights.sum(1), 1.0)


def measure(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]],
            feeds: list[dict[str, np.ndarray]]) -> Accuracy:
    """Accuracy of `actual` against `reference` (one dict of outputs per feed; a Reference keeps what it
    derives from them for the next call), worst over outputs."""
    acc = Accuracy()
    abs_sum = count = 0.0
    cos: dict[str, list[np.ndarray]] = {}
    pooled: dict[str, list[np.ndarray]] = {}
    top1: list[float] = []
    quality = _LogitQuality()
    derived = reference.derived if isinstance(reference, Reference) and reference.feeds is feeds else {}
    for index, (want, got, feed) in enumerate(zip(reference, actual, feeds)):
        mask = feed.get("attention_mask")
        mask = mask if mask is not None and mask.ndim == 2 else None
        for name, expected in want.items():
            if not np.issubdtype(expected.dtype, np.floating):
                continue
            e, a = expected.astype(np.float64), got[name].astype(np.float64)
            if a.shape != e.shape:  # e.g. logits of the last position only against every position's
                raise ValueError(f"{name}: shape {a.shape} measured against the reference's {e.shape}")
            if nonfinite_where_finite(a, e):  # anywhere, padding included: 0 * NaN poisons later steps
                acc.finite = False
                continue
            real_a, real_e = unpadded(a, feed), unpadded(e, feed)  # padding positions are read by nothing
            diff = np.abs(real_a - real_e)
            acc.max_abs = max(acc.max_abs, float(diff.max()) if diff.size else 0.0)
            abs_sum, count = abs_sum + float(diff.sum()), count + diff.size
            rows_a, rows_e = _as_rows(real_a), _as_rows(real_e)
            cos.setdefault(name, []).append(_row_cosines(rows_a, rows_e))
            logits = "logits" in name.lower() and e.shape[-1] > 1
            if logits:  # a distribution per position: top-1, KL, perplexity (pooling them means nothing)
                top1.append(float(np.mean(rows_a.argmax(-1) == rows_e.argmax(-1))))
                if (index, name) not in derived:
                    derived[index, name] = _ReferenceLogits.of(e, feed)
                quality.add(a, derived[index, name], feed)
            elif mask is not None and e.ndim == 3 and e.shape[:2] == mask.shape:
                pooled.setdefault(name, []).append(_row_cosines(_pooled(a, mask), _pooled(e, mask)))
    acc.mean_abs = abs_sum / count if count else 0.0
    for rows in cos.values():
        values = np.concatenate(rows)
        acc.token_cosine = min(acc.token_cosine, float(values.mean()))
        acc.token_cosine_min = min(acc.token_cosine_min, float(values.min()))
    for rows in pooled.values():
        values = np.concatenate(rows)
        acc.pooled_cosine = min(acc.pooled_cosine or 1.0, float(values.mean()))
        acc.pooled_cosine_min = min(acc.pooled_cosine_min or 1.0, float(values.min()))
    acc.top1 = min(top1) if top1 else None
    quality.finish(acc)
    return acc
