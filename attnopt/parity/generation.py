"""Parity of a decoder with a KV cache over whole generations, not one step at one shape.

Scenarios, each run through the same step on PyTorch and on the artifact, compared per step (logits and
every present, at real positions only):
  - prefill with an empty past, then decode steps of one token, on a left-padded batch of prompts of
    different lengths (the artifact is fed the reference's tokens, so one step's error does not compound);
  - chunked prefill: a prompt fed in chunks of several tokens on top of a past;
then greedy generation on the artifact against Hugging Face `generate`, token by token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnopt.generation.loop import StepFn, first_feeds, greedy, left_padded, next_feeds
from attnopt.models.loaded import LoadedModel
from attnopt.parity.metrics import compare, compare_in_units
from attnopt.parity.padding import at_last_positions, nonfinite_where_finite, unpadded
from attnopt.parity.tolerance import Tolerance

#: prompt lengths of the left-padded batch (different, so that padding is real) and of the chunked prompt
BATCH_PROMPT_LENGTHS = (7, 3)
CHUNKED_PROMPT_LENGTH, CHUNK = 9, 4


@dataclass
class StepResult:
    scenario: str
    step: int
    batch: int
    seq: int
    past: int
    logits_max_abs: float
    #: per layer, the larger of key and value max abs error
    layer_max_abs: list[float]
    passed: bool
    reason: str = ""
    #: cosine similarity of the logits compared (real positions only)
    logits_cosine: float | None = None
    #: the lowest cosine over the logits and every present compared: the step's worst, as max abs is
    cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("scenario", "step", "batch", "seq", "past", "logits_max_abs",
                                               "logits_cosine", "cosine", "layer_max_abs", "passed", "reason")}


@dataclass
class TokenResult:
    expected: list[list[int]]
    actual: list[list[int]]

    @property
    def first_divergence(self) -> dict[str, int] | None:
        """The first (row, step) where the artifact's greedy token differs from Hugging Face's."""
        for row, (want, got) in enumerate(zip(self.expected, self.actual)):
            for step in range(max(len(want), len(got))):
                a = want[step] if step < len(want) else None
                b = got[step] if step < len(got) else None
                if a != b:
                    return {"row": row, "step": step, "expected": a, "actual": b}
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "actual": self.actual, "identical": self.first_divergence is None,
                "first_divergence": self.first_divergence}


@dataclass
class GenerationParity:
    tolerance: Any  # a Tolerance, or a precision's criteria
    steps: list[StepResult] = field(default_factory=list)
    tokens: TokenResult | None = None
    error: str = ""
    #: fp32 must give Hugging Face's tokens exactly; reduced precision is held to its per-step criteria only
    tokens_must_match: bool = True

    @property
    def passed(self) -> bool:
        tokens_ok = self.tokens is not None and (self.tokens.first_divergence is None or not self.tokens_must_match)
        return not self.error and bool(self.steps) and all(s.passed for s in self.steps) and tokens_ok

    @property
    def layer_max_abs(self) -> list[float]:
        """Per layer, the largest cache error over every step of every scenario."""
        if not self.steps:
            return []
        return [max(s.layer_max_abs[i] for s in self.steps) for i in range(len(self.steps[0].layer_max_abs))]

    @property
    def first_failure(self) -> str:
        if self.error:
            return self.error
        for s in self.steps:
            if not s.passed:
                return f"{s.scenario} step {s.step} (seq {s.seq}, past {s.past}): {s.reason}"
        divergence = self.tokens.first_divergence if self.tokens else None
        if divergence:
            return (f"greedy tokens differ from Hugging Face generate at row {divergence['row']} step "
                    f"{divergence['step']}: expected {divergence['expected']}, got {divergence['actual']}")
        return ""

    def to_dict(self) -> dict[str, Any]:
        tolerance = {k: getattr(self.tolerance, k, None) for k in ("atol", "rtol", "cosine", "top1")}
        return {"passed": self.passed, "tolerance": {k: v for k, v in tolerance.items() if v is not None},
                "first_failure": self.first_failure, "layer_max_abs": self.layer_max_abs,
                "steps": [s.to_dict() for s in self.steps],
                "tokens": self.tokens.to_dict() if self.tokens else None}


def seeded_prompts(vocab: int, lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def torch_step(loaded: LoadedModel) -> StepFn:
    """The PyTorch reference as a step: the export wrapper itself, so both sides take the same feeds."""
    import torch

    names = loaded.input_names

    def step(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names]
        with torch.inference_mode():
            outputs = loaded.module(*args)
        return {n: o.float().numpy() for n, o in zip(loaded.output_names, outputs)}

    return step


def compare_step(scenario: str, index: int, feeds: dict[str, np.ndarray], want: dict[str, np.ndarray],
                 got: dict[str, np.ndarray], loaded: LoadedModel, tol: Tolerance) -> StepResult:
    layout = loaded.cache
    mask = feeds["attention_mask"]
    seq = feeds["input_ids"].shape[1]
    # the reference's logits at the tokens the artifact computes them for (every position, or each row's last)
    want = {**want, "logits": at_last_positions("logits", want["logits"], got["logits"], feeds)}
    logits = compare_in_units("logits", unpadded(got["logits"], feeds), unpadded(want["logits"], feeds), tol)
    layers, reasons = [], [] if logits.passed else [f"logits: {logits.reason}"]
    cosines = [logits.cosine]
    reasons += [f"{name}: NaN/Inf where the reference is finite" for name in want
                if name in got and nonfinite_where_finite(got[name], want[name])]
    for layer in range(layout.num_layers):
        worst = 0.0
        for kind in ("key", "value"):
            name = f"present.{layer}.{kind}"
            if got[name].shape != want[name].shape:
                reasons.append(f"{name}: shape {got[name].shape} != expected {want[name].shape}")
                worst = float("inf")
                continue
            metrics = compare(name, unpadded(got[name], feeds), unpadded(want[name], feeds), tol)
            worst = max(worst, metrics.max_abs)
            cosines.append(metrics.cosine)
            if not metrics.passed:
                reasons.append(f"{name}: {metrics.reason}")
        layers.append(worst)
    past = mask.shape[1] - seq
    return StepResult(scenario, index, mask.shape[0], seq, past, logits.max_abs, layers, not reasons,
                      "; ".join(reasons[:3]), logits.cosine, min(cosines))


def teacher_forced(reference: StepFn, artifact: StepFn, prompts: list[list[int]], loaded: LoadedModel,
                   tol: Tolerance, steps: int, pad_id: int) -> list[StepResult]:
    """Prefill (empty past) then single-token decode steps, both sides fed the reference's greedy tokens."""
    ids, mask = left_padded(prompts, pad_id)
    feeds = first_feeds(ids, mask, loaded.cache)
    results = []
    for index in range(steps):
        want, got = reference(feeds), artifact(feeds)
        scenario = "prefill (empty past)" if index == 0 else "decode"
        results.append(compare_step(scenario, index, feeds, want, got, loaded, tol))
        chosen = want["logits"][:, -1, :].argmax(-1)[:, None]
        feeds = next_feeds(feeds, want, chosen, loaded.cache)
    return results


def chunked_prefill(reference: StepFn, artifact: StepFn, prompt: list[int], loaded: LoadedModel, tol: Tolerance,
                    chunk: int) -> list[StepResult]:
    """The prompt fed `chunk` tokens at a time: every chunk after the first is seq > 1 on a past."""
    first = np.asarray([prompt[:chunk]], dtype=np.int64)
    feeds = first_feeds(first, np.ones_like(first), loaded.cache)
    results, offset = [], chunk
    for index in range((len(prompt) + chunk - 1) // chunk):
        want, got = reference(feeds), artifact(feeds)
        results.append(compare_step("chunked prefill", index, feeds, want, got, loaded, tol))
        if offset >= len(prompt):
            break
        piece = np.asarray([prompt[offset:offset + chunk]], dtype=np.int64)
        feeds = next_feeds(feeds, want, piece, loaded.cache)
        offset += chunk
    return results


def hf_generate(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int, eos_ids: tuple[int, ...],
                pad_id: int) -> list[list[int]]:
    """Hugging Face `generate`, greedy, on the same left-padded batch; rows cut after their end token."""
    import torch

    ids, mask = left_padded(prompts, pad_id)
    with torch.inference_mode():
        out = loaded.hf_model.generate(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=max_new_tokens,
            min_new_tokens=0, do_sample=False, num_beams=1, eos_token_id=list(eos_ids) or None, pad_token_id=pad_id,
            temperature=None, top_p=None, top_k=None, repetition_penalty=None)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        rows.append(row[:cut])
    return rows


def special_ids(loaded: LoadedModel) -> tuple[tuple[int, ...], int]:
    """End-of-sequence ids and the pad id, from the model's generation config (or its config)."""
    gen = getattr(loaded.hf_model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = getattr(loaded.config, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    pad = getattr(gen, "pad_token_id", None)
    if pad is None:
        pad = getattr(loaded.config, "pad_token_id", None)
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, int(pad)


def verify_generation(loaded: LoadedModel, artifact: StepFn, tol: Any = Tolerance(), *,
                      prompts: list[list[int]] | None = None, max_new_tokens: int = 8, seed: int = 0,
                      tokens_must_match: bool = True) -> GenerationParity:
    """Every scenario of this module on `artifact` against `loaded` (a model loaded with its cache). `tol`
    is a Tolerance or any criteria `parity.metrics.compare` takes (atol, rtol, cosine, top1)."""
    result = GenerationParity(tol, tokens_must_match=tokens_must_match)
    reference = torch_step(loaded)
    eos_ids, pad_id = special_ids(loaded)
    vocab = loaded.cache.vocab_size
    batch = prompts or seeded_prompts(vocab, BATCH_PROMPT_LENGTHS, seed)
    chunked = (prompts[0] if prompts else seeded_prompts(vocab, (CHUNKED_PROMPT_LENGTH,), seed + 1)[0])
    try:
        result.steps += teacher_forced(reference, artifact, batch, loaded, tol, max_new_tokens, pad_id)
        result.steps += chunked_prefill(reference, artifact, chunked, loaded, tol, CHUNK)
        expected = hf_generate(loaded, batch, max_new_tokens, eos_ids, pad_id)
        actual = greedy(artifact, batch, loaded.cache, max_new_tokens, eos_ids=eos_ids, pad_id=pad_id).tokens
        result.tokens = TokenResult(expected, actual)
    except Exception as exc:  # noqa: BLE001 - a runtime that fails on a step is a failed verification
        from attnopt.errors import first_line

        result.error = f"{type(exc).__name__}: {first_line(exc)[:300]}"
    return result
