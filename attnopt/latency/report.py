"""Benchmark output: a terminal table, JSON, a Markdown summary and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from attnopt.latency.bench import BenchResult

COLUMNS = ["backend", "batch", "seq", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_items_s",
           "peak_memory_mb", "speedup"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else (f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}")
    return "" if value is None else str(value)


def print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*COLUMNS, box=None)
    for row in result.rows:
        table.add_row(*(_fmt(row.get(c)) for c in COLUMNS))
    console = Console(stderr=True)
    console.print(table)
    for name, reason in result.skipped.items():
        console.print(f"[dim]skipped {name}: {reason}[/]")


def write_json(result: BenchResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, default=lambda v: None) + "\n")


def markdown(result: BenchResult) -> str:
    lines = [f"# Latency: {result.model}", "", f"Baseline `{result.baseline}`; {result.threads} threads; "
             f"machine: {result.machine.get('processor')} {result.machine.get('gpu', '')}".rstrip(), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS) + " |" for row in result.rows]
    if result.skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{n}` ({r})" for n, r in result.skipped.items())]
    return "\n".join(lines) + "\n"


def plot(result: BenchResult, path: Path) -> None:
    """p50 latency against sequence length, one line per backend and batch size (bars for one length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["backend"], r["batch"]) for r in result.rows})
    if len({r["seq"] for r in result.rows}) == 1:  # one length: bars per backend and batch
        labels = [f"{backend}\nbatch {batch}" for backend, batch in keys]
        values = [next(r["p50_ms"] for r in result.rows if (r["backend"], r["batch"]) == key) for key in keys]
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_xlabel(f"sequence length {result.rows[0]['seq']}")
    else:
        for backend, batch in keys:
            rows = sorted((r for r in result.rows if r["backend"] == backend and r["batch"] == batch),
                          key=lambda r: r["seq"])
            ax.plot([r["seq"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=f"{backend} (batch {batch})")
        ax.set_xlabel("sequence length")
        ax.legend(fontsize=7)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{result.model}: latency before and after optimization")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
