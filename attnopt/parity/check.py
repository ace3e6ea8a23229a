"""`attnopt check`: the PyTorch original against one or more artifacts, per input set and output,
within tolerances chosen by each artifact's precision."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError, first_line
from attnopt.models import LoadedModel, load_model
from attnopt.parity.artifacts import Artifact, open_artifact, ort_providers, runner_for
from attnopt.parity.inputs import check_shapes_fit, input_sets
from attnopt.parity.metrics import OutputMetrics, compare, failed_output
from attnopt.parity.padding import unpadded
from attnopt.parity.tolerance import load_tolerances


@dataclass
class Case:
    artifact: str
    precision: str
    inputs: str  # the input set's label, e.g. "2x16"
    metrics: OutputMetrics
    criteria: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "precision": self.precision, "inputs": self.inputs,
                "criteria": self.criteria, **self.metrics.to_dict()}


@dataclass
class CheckResult:
    model: str
    cases: list[Case] = field(default_factory=list)
    bisect: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: decoders only: per artifact path, its generation parity whole (precision, steps, first failure, greedy
    #: tokens against Hugging Face generate, cache error per layer), as GenerationParity.to_dict gives it
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.metrics.passed for c in self.cases)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if not c.metrics.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "passed": self.passed, "seconds": round(self.seconds, 2),
                "cases": [c.to_dict() for c in self.cases], "bisect": self.bisect,
                **({"generation": self.generation} if self.generation else {})}


def check(model: str | LoadedModel, artifacts: list[str | Path], *, task: str | None = None,
          shapes: list[tuple[int, int]] | None = None, inputs: str | Path | None = None, seed: int = 0,
          tolerances: dict[str, Any] | None = None, config: str | Path | None = None, bisect: bool = False,
          device: str = "cpu", progress: Progress = SILENT) -> CheckResult:
    """Compare MODEL (any spec `export` accepts) with each artifact. Tolerances: defaults by the
    artifact's precision < [tool.attnopt.check] in pyproject.toml or attnopt.toml < `tolerances`.
    ONNX artifacts run on ONNX Runtime's CPU provider, or CUDA with device="cuda". Decoders exported with
    a KV cache are checked over whole generations (attnopt.parity.generation)."""
    from attnopt.runtime import TorchRunner

    start = time.perf_counter()
    if not artifacts:
        raise AttnoptError("no artifact to check", "give one or more .onnx files after MODEL")
    opened = [open_artifact(Path(a)) for a in artifacts]
    providers = ort_providers(device)
    tol = load_tolerances(tolerances or {}, Path(config) if config else None)
    decoders = [is_cached_decoder(a) for a in opened]
    if any(decoders):
        if not all(decoders):
            raise AttnoptError("decoders with a KV cache and other artifacts cannot be checked together",
                               "check the decoder folders' model.onnx in a run of their own")
        return _check_decoders(model, opened, task, tol, providers, progress, start)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        with progress.step(f"Loading {model}"):
            loaded = load_model(model, task)
    sets = input_sets(loaded, shapes, Path(inputs) if inputs else None, seed)
    for artifact in opened:
        for _, feeds in sets:
            check_shapes_fit(str(artifact.path), artifact.inputs, feeds)
    result = CheckResult(loaded.source.get("spec", str(model)))
    with progress.step("Running the PyTorch reference"), TorchRunner(loaded.module, loaded.input_names,
                                                                      loaded.output_names) as reference:
        expected = [reference.infer(feeds) for _, feeds in sets]
    for artifact in opened:
        with progress.step(f"Checking {artifact.path.name} ({artifact.precision})"):
            result.cases += _check_artifact(artifact, loaded, sets, expected, tol, providers)
    if bisect and result.failures:
        from attnopt.parity.bisect import bisect_failures

        with progress.step("Bisecting to the first diverging node"):
            result.bisect = bisect_failures(result, opened, sets)
    result.seconds = time.perf_counter() - start
    return result


def _check_artifact(artifact: Artifact, loaded: LoadedModel, sets: list, expected: list, tol: Any,
                    providers: list[Any]) -> list[Case]:
    cases = []
    with runner_for(artifact, providers) as runner:
        for (label, feeds), want in zip(sets, expected):
            try:
                got = runner.infer({k: v for k, v in feeds.items() if k in artifact.inputs})
            except Exception as exc:  # noqa: BLE001 - a runtime failure is a failed case, with its reason
                got, reason = None, f"runtime failed: {first_line(exc)[:200]}"
            for name in loaded.output_names:
                criteria = tol.for_output(artifact.precision, name)
                if got is None:
                    metrics = failed_output(name, want[name], reason)
                else:
                    actual, reference = unpadded(got.get(name), feeds), unpadded(want[name], feeds)
                    metrics = compare(name, actual, reference, criteria)
                cases.append(Case(str(artifact.path), artifact.precision, label, metrics, criteria.to_dict()))
    return cases


def is_cached_decoder(artifact: Artifact) -> bool:
    """An artifact whose graph takes a past: checked over generations."""
    return any(name.startswith("past_key_values.") for name in artifact.inputs)


def _check_decoders(model: str | LoadedModel, opened: list[Artifact], task: str | None, tol: Any,
                    providers: list[Any], progress: Progress, start: float) -> CheckResult:
    from attnopt.parity.generation import verify_generation

    if task not in (None, "causal-lm"):
        raise AttnoptError(f"a decoder with a KV cache is a causal LM, not {task}", "leave --task out")
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        with progress.step(f"Loading {model}"):
            loaded = load_model(model, "causal-lm", cache=True)
    result = CheckResult(loaded.source.get("spec", str(model)))
    for artifact in opened:
        criteria = tol.for_output(artifact.precision, "logits", language_model=True)
        with progress.step(f"Checking {artifact.path.name} ({artifact.precision}) over generations"), \
                runner_for(artifact, providers) as runner:
            parity = verify_generation(loaded, runner.infer, criteria,
                                       tokens_must_match=artifact.precision == "fp32")
        result.cases += generation_cases(str(artifact.path), artifact.precision, parity, criteria.to_dict())
        result.generation[str(artifact.path)] = {"precision": artifact.precision, **parity.to_dict()}
    result.seconds = time.perf_counter() - start
    return result


def generation_cases(artifact: str, precision: str, parity: Any, criteria: dict[str, float]) -> list[Case]:
    """One case per generation step (logits and every present) and one for the greedy tokens. A step reports
    what it measured: the worst max abs error and the lowest cosine over the logits and presents compared;
    the greedy tokens are compared for identity, so no error metric applies to them (None, shown as "-")."""
    cases = []
    for s in parity.steps:
        worst = max([s.logits_max_abs, *s.layer_max_abs])
        metrics = OutputMetrics(f"logits+present (max over {len(s.layer_max_abs)} layers)", (), worst, None,
                                s.cosine, s.passed, s.reason, None)
        cases.append(Case(artifact, precision, f"{s.scenario} step {s.step} ({s.batch}x{s.seq}, past {s.past})",
                          metrics, criteria))
    divergence = parity.tokens.first_divergence if parity.tokens else None
    tokens_ok = parity.tokens is not None and (divergence is None or not parity.tokens_must_match)
    reason = parity.error or ("" if tokens_ok else parity.first_failure)
    metrics = OutputMetrics("greedy tokens", (), None, None, None, tokens_ok and not parity.error, reason, None)
    cases.append(Case(artifact, precision, "greedy generation vs Hugging Face generate", metrics, criteria))
    return cases
