"""The README's main command, `attnopt run --out DIR`, run several times while a CPU-bound process runs
beside it (as on a user's busy machine): what the report says about the fused model against the raw
export, each time. The target: it never states that the fused model is slower when it is not.

    python benchmarks/latency_under_load.py            # 3 runs of the bundled MiniLM
    python benchmarks/latency_under_load.py --runs 5 --blocks-too   # also time in blocks, as bench used to
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results

FUSED, RAW, TORCH = "ort-cpu:model.ort.onnx", "ort-cpu:model.onnx", "torch-cpu"


def _comparison(latency: dict, backend: str, against: str) -> dict:
    return next(c for c in latency["comparisons"] if (c["backend"], c["against"]) == (backend, against))


def _row(label: str, latency: dict, seconds: float) -> dict:
    fused = _comparison(latency, FUSED, RAW)
    raw = _comparison(latency, RAW, TORCH)
    p50 = {r["backend"]: r["p50_ms"] for r in latency["rows"]}
    return {"run": label, "timing": latency["timing"]["mode"], "rounds": latency["rows"][0]["rounds"],
            "threads": latency["threads"], "raw p50 ms": round(p50[RAW], 1),
            "fused p50 ms": round(p50[FUSED], 1),
            "fused/raw": f"{fused['ratio']:.2f}x ({fused['ci_low']:.2f}-{fused['ci_high']:.2f})",
            "fused verdict": fused["verdict"],
            "raw/torch": f"{raw['ratio']:.2f}x ({raw['ci_low']:.2f}-{raw['ci_high']:.2f})",
            "noise warning": "yes" if any("too noisy" in w for w in latency["warnings"]) else "no",
            "seconds": round(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--blocks-too", action="store_true", help="also `attnopt bench --blocks` on the same artifacts")
    args = parser.parse_args()
    attnopt = [sys.executable, "-c", "from attnopt.cli import cli; cli()"]
    work = Path(tempfile.mkdtemp(prefix="latency-under-load."))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows = []
    try:
        for i in range(1, args.runs + 1):
            out = work / f"out-{i}"
            start = time.perf_counter()
            subprocess.run([*attnopt, "-q", "run", args.model, "--out", str(out)], check=True)
            latency = json.loads((out / "report.json").read_text())["latency"]
            rows.append(_row(f"{i}: attnopt run", latency, time.perf_counter() - start))
            if args.blocks_too:
                start = time.perf_counter()
                artifacts = [str(out / "model.onnx"), str(out / "model.ort.onnx")]
                subprocess.run([*attnopt, "-q", "bench", args.model, *artifacts, "--blocks", "--json",
                                str(out / "blocks.json")], check=True)
                rows.append(_row(f"{i}: bench --blocks", json.loads((out / "blocks.json").read_text()),
                                 time.perf_counter() - start))
            print(rows[-1], flush=True)
    finally:
        hog.kill()
        hog.wait()
        shutil.rmtree(work, ignore_errors=True)
    columns = ["run", "timing", "rounds", "threads", "raw p50 ms", "fused p50 ms", "fused/raw", "fused verdict",
               "raw/torch", "noise warning", "seconds"]
    notes = [f"`attnopt run {args.model} --out DIR` (defaults: batch 1, seq 128, 2 threads, 50 rounds), each run in "
             "a fresh folder, with `python -c 'while True: pass'` running beside it. Ratios are median latency of "
             "the `against` backend over this one's (above 1: faster), with the 95% bootstrap CI over rounds."]
    print(write_results("latency_under_load", rows, columns, "Latency verdicts under load", notes))


if __name__ == "__main__":
    main()
