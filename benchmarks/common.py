"""Shared by the benchmark scripts: machine description, ONNX Runtime timing, table writing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d")}


def ort_session(model: str | Path, level: str = "all", threads: int = 2, providers: list[str] | None = None,
                flush_denormals: bool = False):
    import onnxruntime as ort

    from attnopt.latency.backends import FLUSH_DENORMALS

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    for key, value in (FLUSH_DENORMALS if flush_denormals else {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    return ort.InferenceSession(str(model), options, providers=providers or ["CPUExecutionProvider"])


def time_session(session: Any, feeds: dict[str, np.ndarray], warmup: int = 5, runs: int = 30) -> dict[str, float]:
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feeds.items() if k in names}
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "mean_ms": statistics.fmean(samples)}


def time_interleaved(sessions: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int = 8, runs: int = 8,
                     warmup: int = 5) -> dict[str, dict[str, float]]:
    """Time several sessions round-robin, so the drift of a shared machine lands on all of them alike."""
    feed_for, per_round = {}, {}
    for name, session in sessions.items():
        names = {i.name for i in session.get_inputs()}
        feed_for[name] = {k: v for k, v in feeds.items() if k in names}
        start = time.perf_counter()
        for _ in range(warmup):
            session.run(None, feed_for[name])
        each = (time.perf_counter() - start) / warmup
        # small models get more runs, so each round spends at least ~0.25 s per variant
        per_round[name] = max(runs, int(0.25 / max(each, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(per_round[name]):
                start = time.perf_counter()
                session.run(None, feed_for[name])
                samples[name].append((time.perf_counter() - start) * 1000)
    stats = {}
    for name, values in samples.items():
        values.sort()
        stats[name] = {"p50_ms": statistics.median(values), "p90_ms": values[int(0.9 * (len(values) - 1))],
                       "mean_ms": statistics.fmean(values)}
    return stats


def merge_rows(name: str, rows: list[dict[str, Any]], only: list[str], order: list[str]) -> list[dict[str, Any]]:
    """New rows for the models in `only`, the committed rows of the others, ordered by model as `order`."""
    kept = [r for r in json.loads((RESULTS / f"{name}.json").read_text())["rows"] if r["model"] not in only]
    return sorted(kept + rows, key=lambda r: order.index(r["model"]))


def write_results(name: str, rows: list[dict[str, Any]], columns: list[str], title: str, notes: list[str]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = [f"# {title}", "", f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
             f"onnxruntime {info['onnxruntime']}; {info['date']}.", ""]
    lines += notes + [""] if notes else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.2f}"
    return str(value)
