"""Sweep batch x sequence over every backend, time each through the same runner interface the parity
check uses, and compare against a baseline backend."""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from attnopt.latency.backends import Backend, backends_for
from attnopt.latency.timing import measure, summarize
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError
from attnopt.models import DEFAULT_TASK, LoadedModel, load_model


@dataclass
class BenchResult:
    model: str
    baseline: str
    threads: int
    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "baseline": self.baseline, "threads": self.threads, "machine": self.machine,
                "rows": self.rows, "skipped": self.skipped}


def _machine(threads: int) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "threads": threads, "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _call(runner: Any, feed: dict[str, Any]) -> Callable[[], Any]:
    """The timed call, with its inputs already in the runner's own form (torch tensors on the device)."""
    from attnopt.runtime import TorchRunner

    if isinstance(runner, TorchRunner):
        import torch

        args = [torch.from_numpy(feed[n]).to(runner.device) for n in runner.input_names]

        def run() -> Any:
            with torch.inference_mode():
                return runner.module(*args)
        return run
    names = set(getattr(runner, "input_names", feed))
    own = {k: v for k, v in feed.items() if k in names}
    return lambda: runner.infer(own)


def _peak_memory_mb(backend: Backend) -> float:
    if backend.name.startswith(("torch-cuda", "ort-cuda", "tensorrt")):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if backend.name == "torch-cuda" else float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # process peak so far, Linux kB


def bench(model: str | LoadedModel, artifacts: list[str | Path] | None = None, *, task: str = DEFAULT_TASK,
          batches: list[int] | None = None, seqs: list[int] | None = None, baseline: str = "torch-cpu",
          warmup: int = 5, runs: int = 30, budget_s: float | None = None, threads: int = 2, seed: int = 0,
          flush_denormals: bool = False, progress: Progress = SILENT) -> BenchResult:
    import torch

    paths = [Path(a) for a in artifacts or []]
    for path in paths:
        if not path.is_file():
            raise AttnoptError(f"{path}: no such file")
    torch.set_num_threads(threads)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, task)
    found = backends_for(loaded, paths, threads, flush_denormals)
    names = [b.name for b in found]
    if baseline not in names:
        raise AttnoptError(f"unknown baseline {baseline!r}", f"choose one of: {', '.join(names)}")
    result = BenchResult(loaded.source.get("spec", str(model)), baseline, threads,
                         {**_machine(threads), "ort_flush_denormals": flush_denormals})
    result.skipped = {b.name: b.skipped for b in found if b.make is None}
    batches, seqs = batches or [1], seqs or [128]
    for backend in [b for b in found if b.make is not None]:
        with backend.make() as runner:  # type: ignore[misc]
            for batch in batches:
                for seq in seqs:
                    feed = {k: v.numpy() for k, v in loaded.make_inputs(batch, seq, seed=seed).items()}
                    with progress.step(f"{backend.name} batch {batch} seq {seq}"):
                        start = time.perf_counter()
                        samples = measure(_call(runner, feed), warmup=warmup, runs=runs, budget_s=budget_s,
                                          sync=backend.sync)
                    result.rows.append({"backend": backend.name, "batch": batch, "seq": seq,
                                        **summarize(samples, batch), "peak_memory_mb": _peak_memory_mb(backend),
                                        "seconds": time.perf_counter() - start})
    base = {(r["batch"], r["seq"]): r["p50_ms"] for r in result.rows if r["backend"] == baseline}
    for row in result.rows:
        ref = base.get((row["batch"], row["seq"]))
        row["speedup"] = ref / row["p50_ms"] if ref and row["p50_ms"] else None
    return result
