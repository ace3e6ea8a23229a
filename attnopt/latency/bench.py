"""`attnopt bench`: every backend alive at once where memory allows, timed in shuffled rounds at each point
(batch x sequence; for a decoder with a KV cache, prefill and decode at several past lengths) through the
same runners the parity check uses, then each comparison as a ratio of medians with a 95% confidence
interval and a verdict."""

from __future__ import annotations

import math
import os
import platform
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError
from attnopt.latency.backends import Backend, backends_for, pairs
from attnopt.latency.decoder import DEFAULT_PASTS, decoder_points, is_cached_decoder_file, layout_of, model_file
from attnopt.latency.memory import fit_together
from attnopt.latency.points import Point, describe, point, point_of, tokens_per_s
from attnopt.latency.stats import RESOLVE, compare, summarize
from attnopt.latency.timing import Rounds, calls_per_round, time_rounds, warm_up
from attnopt.models import LoadedModel, load_model


@dataclass
class BenchResult:
    model: str
    baseline: str
    threads: int
    machine: dict[str, Any]
    timing: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a value not measured (memory on a GPU, an interval from too few rounds) is None, never
        NaN or Infinity, which strict JSON parsers reject."""
        return _finite({"model": self.model, "baseline": self.baseline, "threads": self.threads,
                        "machine": self.machine, "timing": self.timing, "rows": self.rows,
                        "comparisons": self.comparisons, "warnings": self.warnings, "skipped": self.skipped})


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _machine(threads: int) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _rss_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


class _Activated:
    """Runners activated, with the memory each took (resident growth on CPU) and whether host copies are timed."""

    def __init__(self, stack: ExitStack):
        self.stack, self.runners, self.memory_mb = stack, {}, {}

    def open(self, backend: Backend) -> Any:
        before = _rss_mb()
        runner = self.stack.enter_context(backend.make())  # type: ignore[misc]
        self.runners[backend.name] = runner
        self.memory_mb[backend.name] = _rss_mb() - before if backend.device == "cpu" else float("nan")
        return runner


def measure(backends: list[Backend], feeds: dict[Point, dict[str, np.ndarray]], *, warmup: int = 5,
            runs: int = 50, budget_s: float | None = None, interleave: bool = True, seed: int = 0,
            progress: Progress = SILENT) -> tuple[list[dict[str, Any]], dict[str, Any], dict[Point, Rounds]]:
    """Time the available backends at every point (attnopt.latency.points): `runs` rounds each (more with a
    budget). Interleaved when `interleave` and they fit in memory together, else in blocks, one backend at a
    time. A row is the point's labels, the statistics, and tokens/s for a decoder point."""
    live = [b for b in backends if b.make is not None]
    needs: dict[str, int] = {}
    for b in live:
        needs[b.device] = needs.get(b.device, 0) + b.needs
    reason = fit_together(needs) if interleave else "asked for blocks"
    timing = {"mode": "blocks" if reason else "interleaved", "why_blocks": reason, "rounds_at_least": runs,
              "budget_s": budget_s, "warmup_calls_at_least": warmup, "clock": "wall clock, device synchronised"}
    rng = np.random.default_rng(seed)
    rounds: dict[Point, Rounds] = {}
    memory: dict[str, float] = {}
    host_copies: dict[str, bool | None] = {}
    cache: dict[str, str] = {}
    decoder = any("phase" in dict(at) for at in feeds)
    groups = [live] if not reason else [[b] for b in live]
    for group in groups:
        with ExitStack() as stack:
            active = _Activated(stack)
            for b in group:
                runner = active.open(b)
                host_copies[b.name] = runner.host_copies_timed
                if decoder and getattr(runner, "cache_protocol", None):
                    cache[b.name] = runner.cache_protocol
            memory.update(active.memory_mb)
            for at, feed in feeds.items():
                label = f"{describe(at)}: " + ", ".join(b.name for b in group)
                with progress.step(f"Timing {label} ({timing['mode']})"):
                    calls = {b.name: active.runners[b.name].prepare(feed) for b in group}
                    per_round = {n: calls_per_round(warm_up(c, warmup)) for n, c in calls.items()}
                    got = time_rounds(calls, per_round, rounds=runs, budget_s=budget_s, rng=rng)
                here = rounds.setdefault(at, Rounds())
                here.calls.update(got.calls)
                here.orders += got.orders
    timing["host_copies_timed"] = {n: v for n, v in host_copies.items() if v is not None}
    if cache:
        timing["kv_cache"] = cache  # per ONNX Runtime decoder: one buffer for past and present, or concatenated
    rows = []
    for at, got in rounds.items():
        labels = dict(at)
        for b in live:
            row = {"backend": b.name, **labels, **summarize(got.flat(b.name), labels["batch"]),
                   "rounds": len(got.calls[b.name]), "calls_per_round": len(got.calls[b.name][0]),
                   "rounds_ms": [round(v, 4) for v in got.medians(b.name)], "memory_mb": memory[b.name]}
            speed = tokens_per_s(labels, row["p50_ms"])
            if speed is not None:
                row["tokens_per_s"] = speed
            rows.append(row)
    return rows, timing, rounds


def comparisons(rounds: dict[Point, Rounds], wanted: list[tuple[str, str]], *, paired: bool = True,
                seed: int = 0) -> list[dict[str, Any]]:
    return [compare(name, against, dict(at), got.medians(name), got.medians(against), paired=paired, seed=seed)
            for at, got in rounds.items() for name, against in wanted]


def noise_warning(result: BenchResult) -> str:
    noisy = [c for c in result.comparisons if c["resolution"] > RESOLVE]
    if not noisy:
        return ""
    worst = max(c["resolution"] for c in noisy)
    advice = [f"more rounds (--runs {2 * result.timing['rounds_at_least']}) or a time budget (--budget 20)"]
    cores = result.machine.get("cores") or 0
    if cores and result.threads >= cores:
        advice.append(f"fewer threads than the {cores} cores (--threads {max(1, cores // 2)})")
    advice.append("less other work on the machine")
    return (f"the run was too noisy to resolve a {RESOLVE:.0%} difference in {len(noisy)} of "
            f"{len(result.comparisons)} comparisons (95% CI up to ±{worst:.0%}); for a sharper answer time "
            "again with `attnopt bench` and " + ", ".join(advice))


def bench(model: str | LoadedModel, artifacts: list[str | Path] | None = None, *, task: str | None = None,
          batches: list[int] | None = None, seqs: list[int] | None = None, pasts: list[int] | None = None,
          baseline: str = "torch-cpu", warmup: int = 5, runs: int = 50, budget_s: float | None = None,
          threads: int = 2, seed: int = 0, flush_denormals: bool = True, interleave: bool = True,
          progress: Progress = SILENT) -> BenchResult:
    """Time `model` on PyTorch and each artifact on every backend at hand. Artifacts that are decoders with a KV
    cache (an .onnx whose graph takes past_key_values.*, or its folder) are timed at prefill (`seqs`: prompt
    lengths, on an empty past) and at decode (one token on each past length in `pasts`, default 0/128/512
    where the model's context holds them); anything else at each batch x sequence size."""
    import torch

    paths = [model_file(Path(a)) for a in artifacts or []]
    for path in paths:
        if not path.is_file():
            raise AttnoptError(f"{path}: no such file")
    if runs < 2 or warmup < 0 or threads < 1 or (budget_s is not None and budget_s <= 0):
        raise AttnoptError("--runs must be at least 2, --warmup at least 0, --threads at least 1 and --budget positive")
    decoders = [is_cached_decoder_file(p) for p in paths]
    decoder = any(decoders)
    if decoder and not all(decoders):
        raise AttnoptError("decoders with a KV cache and other artifacts cannot be timed together",
                           "bench the decoder folders in a run of their own")
    if decoder and task not in (None, "causal-lm"):
        raise AttnoptError(f"a decoder with a KV cache is a causal LM, not {task}", "leave --task out")
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        with progress.step(f"Loading {model}"):
            loaded = load_model(model, "causal-lm", cache=True) if decoder else load_model(model, task)
    found = backends_for(loaded, paths, threads, flush_denormals)
    names = [b.name for b in found]
    if baseline not in names:
        raise AttnoptError(f"unknown baseline {baseline!r}", f"choose one of: {', '.join(names)}")
    if next(b for b in found if b.name == baseline).make is None:
        raise AttnoptError(f"baseline {baseline} is not available here", "choose another with --baseline")
    result = BenchResult(loaded.source.get("spec", str(model)), baseline, threads,
                         {**_machine(threads), "ort_flush_denormals": flush_denormals})
    result.skipped = {b.name: b.skipped for b in found if b.make is None}
    if decoder:
        feeds, notes = decoder_points(layout_of(loaded), batches or [1], seqs or [128],
                                      list(DEFAULT_PASTS) if pasts is None else pasts, seed=seed)
        result.warnings += notes
    else:
        feeds = {point(batch=b, seq=n): {k: v.numpy() for k, v in loaded.make_inputs(b, n, seed=seed).items()}
                 for b in batches or [1] for n in seqs or [128]}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result.rows, result.timing, rounds = measure(found, feeds, warmup=warmup, runs=runs, budget_s=budget_s,
                                                     interleave=interleave, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(previous)
    result.comparisons = comparisons(rounds, pairs(found, baseline), paired=result.timing["mode"] == "interleaved",
                                     seed=seed)
    base = {(c["backend"], *point_of(c)): c["ratio"] for c in result.comparisons if c["against"] == baseline}
    for row in result.rows:
        row["speedup"] = 1.0 if row["backend"] == baseline else base.get((row["backend"], *point_of(row)))
    if result.timing["mode"] == "blocks":
        result.warnings.append(f"timed in blocks, one backend after the other ({result.timing['why_blocks']}): "
                               "drift on the machine between blocks reads as a difference")
    noisy = noise_warning(result)
    if noisy:
        result.warnings.append(noisy)
    for warning in result.warnings:
        progress.warn(warning)
    return result

