"""Benchmark output: a terminal table, JSON, a Markdown summary whose sentences state only what the
confidence intervals support, and a PNG of the spread (box plots of the rounds)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from attnopt.latency.bench import BenchResult
from attnopt.latency.points import KEYS, describe, point_of
from attnopt.latency.stats import FASTER, SLOWER

STATS = ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_items_s", "rounds", "memory_mb", "speedup"]
#: a decoder's rows say tokens/s (prompt tokens for prefill, new tokens for decode) instead of items/s
DECODER_STATS = ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "tokens_per_s", "rounds", "memory_mb", "speedup"]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """backend, the point's labels, then the statistics."""
    keys = [k for k in KEYS if rows and k in rows[0]]
    return ["backend", *keys, *(DECODER_STATS if "phase" in keys else STATS)]


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` (same suffix) that replaces it only once fully written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=folder)
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else (f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}")
    return "" if value is None else str(value)


def label(backend: str) -> str:
    """ort-cpu:model.ort.onnx -> model.ort.onnx (ort-cpu); torch-cpu stays as it is."""
    runtime, _, artifact = backend.partition(":")
    return f"{artifact} ({runtime})" if artifact else backend


def sentence(c: dict[str, Any]) -> str:
    """'model.ort.onnx is 1.18x faster than model.onnx on ort-cpu (95% CI 1.15-1.21x)', or that there is
    no measurable difference: never a speedup or slowdown the interval does not support."""
    mine, theirs, where = label(c["backend"]), label(c["against"]), ""
    runtime, _, artifact = c["backend"].partition(":")
    other, _, other_artifact = c["against"].partition(":")
    if artifact and other_artifact and runtime == other:
        mine, theirs, where = artifact, other_artifact, f" on {runtime}"
    if c["verdict"] == FASTER:
        return (f"{mine} is {c['ratio']:.2f}x faster than {theirs}{where} "
                f"(95% CI {c['ci_low']:.2f}-{c['ci_high']:.2f}x)")
    if c["verdict"] == SLOWER:
        return (f"{mine} is {1 / c['ratio']:.2f}x slower than {theirs}{where} "
                f"(95% CI {1 / c['ci_high']:.2f}-{1 / c['ci_low']:.2f}x)")
    return (f"no measurable difference between {mine} and {theirs}{where} (ratio {c['ratio']:.2f}x, "
            f"95% CI {c['ci_low']:.2f}-{c['ci_high']:.2f}x)")


def print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    names = columns(result.rows)
    table = Table(*names, box=None)
    for row in result.rows:
        table.add_row(*(_fmt(row.get(c)) for c in names))
    console = Console(stderr=True, highlight=False)
    console.print(table)
    for c in result.comparisons:
        console.print(f"{describe(c)}: {sentence(c)}")
    for name, reason in result.skipped.items():
        console.print(f"[dim]skipped {name}: {reason}[/]")


def write_json(result: BenchResult, path: Path) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=lambda v: None) + "\n")


def write_markdown(result: BenchResult, path: Path) -> None:
    with atomic(path) as tmp:
        tmp.write_text(markdown(result))


def how_timed(result: BenchResult | dict[str, Any]) -> str:
    data = result.to_dict() if isinstance(result, BenchResult) else result
    timing, machine = data["timing"], data["machine"]
    mode = ("interleaved: every backend alive at once, timed in rounds in a shuffled order"
            if timing["mode"] == "interleaved" else f"in blocks, one backend after the other ({timing['why_blocks']})")
    rows = data["rows"]
    rounds = min((r["rounds"] for r in rows), default=0)
    flush = "on" if machine.get("ort_flush_denormals") else "off"
    copies = ", ".join(f"`{n}` {'includes' if v else 'excludes'} host copies"
                       for n, v in timing.get("host_copies_timed", {}).items())
    cache = ", ".join(f"`{n}` {how}" for n, how in timing.get("kv_cache", {}).items())
    return (f"Timed {mode}; {rounds} rounds per backend; {data['threads']} thread{'s' if data['threads'] != 1 else ''} on {machine.get('cores')} cores; "
            f"ONNX Runtime CPU flushes denormals to zero: {flush}" + (f"; {copies}" if copies else "")
            + (f"; KV cache: {cache}" if cache else "") + ".")


def markdown(result: BenchResult) -> str:
    lines = [f"# Latency: {result.model}", "", f"Baseline `{result.baseline}`; machine: "
             f"{result.machine.get('processor')} {result.machine.get('gpu', '')}".rstrip(), "", how_timed(result), ""]
    lines += [f"- {describe(c)}: {sentence(c)}" for c in result.comparisons]
    lines += [""] + [f"> warning: {w}" for w in result.warnings] + ([""] if result.warnings else [])
    names = columns(result.rows)
    lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in names) + " |" for row in result.rows]
    if result.skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{n}` ({r})" for n, r in result.skipped.items())]
    return "\n".join(lines) + "\n"


def plot(result: BenchResult | dict[str, Any], path: Path) -> None:
    """One panel per point (batch x sequence; a decoder's prefill and each decode past), a box per backend
    over its rounds (median, quartiles, whiskers, outliers), so the spread is seen and not only a median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    data = result.to_dict() if isinstance(result, BenchResult) else result
    points = list(dict.fromkeys(point_of(r) for r in data["rows"]))
    cols = min(3, len(points)) or 1
    rows = (len(points) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.5, 3.8 * rows), squeeze=False)
    for ax, at in zip(axes.flat, points):
        here = [r for r in data["rows"] if point_of(r) == at]
        values = [r["rounds_ms"] for r in here]
        ax.boxplot(values, vert=False, showfliers=True)
        low, high = min(min(v) for v in values), max(max(v) for v in values)
        if low > 0 and high / low > 20:  # PyTorch eager next to a fused model: keep both boxes readable
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels at 1-2-5 only, not crowded minor ones
        ax.set_yticks(range(1, len(here) + 1), [label(r["backend"]).replace(" (", "\n(") for r in here], fontsize=7)
        ax.set_title(describe(at), fontsize=9)
        ax.set_xlabel("latency per call (ms), one value per round")
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[len(points):]:
        ax.axis("off")
    fig.suptitle(f"{data['model']}: latency ({data['timing']['mode']})", fontsize=10)
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
