"""Targets of the export and optimize commands, measured as a user runs them (the installed CLI):

- `attnopt export minilm` wall time and its verified max abs error at both shapes;
- `attnopt optimize` on that export and on bert-base's, wall time (verification on);
- `--scale`: the llama-800m preset (~3 GB of fp32 weights) exports with external data and is optimized;
  peak resident memory of each process against the weights' size.

    python benchmarks/export_targets.py [--scale]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results


#: runs one command and prints its own child's peak RSS: each step's peak is measured alone
_WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(rc)")


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one command."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    return seconds, int(proc.stdout.strip().splitlines()[-1])


def optimize_row(exe: list[str], model: Path, name: str, target: str, weights: int | None = None) -> dict:
    out, report = model.with_name(f"{name}.ort.onnx"), model.with_name(f"{name}.coverage.json")
    seconds, peak = timed([*exe, "-q", "optimize", str(model), "-o", str(out), "--target", "ort",
                           "--report", str(report)])
    data = json.loads(report.read_text())
    fused = ", ".join(f"{k} {v['fused']}/{v['sites']}" for k, v in data["fusions"].items() if v["sites"])
    result = f"{fused}; verified={data['verification']['verified']} in {data['verification']['runs']} run(s)"
    if weights:
        result += f"; peak {peak / weights:.2f}x the weights"
    return {"step": f"attnopt optimize {name} (ort, verified)", "seconds": seconds, "peak RSS GB": peak / 1e9,
            "result": result, "target": target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", action="store_true", help="also export llama-800m (minutes, ~10 GB of memory)")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "attnopt.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "minilm.onnx"
        seconds, peak = timed([*exe, "-q", "export", "minilm", "-o", str(model)])
        side = json.loads(model.with_name("minilm.attnopt.json").read_text())
        worst = max(o["max_abs"] for s in side["verification"]["shapes"] for o in s["outputs"])
        shapes = ", ".join(f"{s['batch']}x{s['seq']}" for s in side["verification"]["shapes"])
        rows.append({"step": "attnopt export minilm", "seconds": seconds, "peak RSS GB": peak / 1e9,
                     "result": f"max abs {worst:.2e} at {shapes}", "target": "< 60 s, max abs <= 1e-4"})
        seconds, peak = timed([*exe, "-q", "optimize", str(model), "-o", str(Path(tmp) / "m.ort.onnx"),
                                  "--target", "ort", "--report", str(Path(tmp) / "r.json")])
        report = json.loads((Path(tmp) / "r.json").read_text())
        fused = ", ".join(f"{k} {v['fused']}/{v['sites']}" for k, v in report["fusions"].items() if v["sites"])
        rows.append({"step": "attnopt optimize minilm (ort, verified)", "seconds": seconds, "peak RSS GB": peak / 1e9,
                     "result": fused, "target": "< 4 s"})
        base = Path(tmp) / "bert-base.onnx"
        timed([*exe, "-q", "export", "bert-base", "-o", str(base), "--no-verify"])
        rows.append(optimize_row(exe, base, "bert-base", "< 10 s"))
        if args.scale:
            big = Path(tmp) / "llama.onnx"
            seconds, peak = timed([*exe, "-q", "export", "llama-800m", "-o", str(big), "--seq", "8"])
            weights = big.with_name("llama.onnx.data").stat().st_size
            side = json.loads(big.with_name("llama.attnopt.json").read_text())
            rows.append({"step": "attnopt export llama-800m", "seconds": seconds, "peak RSS GB": peak / 1e9,
                         "result": f"external data {weights / 1e9:.2f} GB; peak {peak / weights:.2f}x the weights; "
                                   f"verified={side['verification']['passed']}",
                         "target": "external data, peak <= 3x weights"})
            rows.append(optimize_row(exe, big, "llama-800m", "< 40 s, peak <= 1.5x weights", weights))
    for row in rows:
        print(row)
    notes = ["Each step is one `python -m attnopt.cli` process; peak RSS is that process's (ru_maxrss).",
             "Command: `python benchmarks/export_targets.py --scale`"]
    print(write_results("export_targets", rows, ["step", "seconds", "peak RSS GB", "result", "target"],
                        "Export and optimize targets", notes))


if __name__ == "__main__":
    main()
