"""`attnopt run` on a decoder LLM (default: the real SmolLM2-135M): its prefill and decode latency table, verdicts
and generation parity, with the machine and the load it ran under, into results/decoder_run_<model>.md/json.

    python benchmarks/decoder_run.py --out out-smollm2 [--model smollm2] [--threads 1] [--note TEXT]

The run's stages are cached by content: pointed at a folder that `attnopt run` already filled with the same
options, the script reports that run (the stages say "cached") and --note should say what load it ran under;
otherwise it runs every stage now and records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", required=True, help="the run's folder (reused where its stages are cached)")
    parser.add_argument("--seq", type=int, default=128, help="prefill prompt length")
    parser.add_argument("--past", default="0,128,512", help="decode past lengths")
    parser.add_argument("--threads", type=int, default=1, help="1 on a busy 2-core machine")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--note", default="", help="how the machine was loaded, where the stages were cached")
    args = parser.parse_args()

    from attnopt.usecases.run import latency_sentences, run

    before = os.getloadavg()
    pasts = [int(p) for p in args.past.split(",")]
    # the options `attnopt run` passes, so a folder it filled is reused stage for stage
    result = run(args.model, args.out, batches=[1], seqs=[args.seq], pasts=pasts, runs=args.runs, threads=args.threads)
    after = os.getloadavg()
    report = result.report
    stages = {s.name: s.status for s in result.stages}
    latency, parity = report.get("latency") or {}, (report.get("parity") or {}).get("generation") or {}
    content = {"model": args.model, "machine": machine(), "load_average_1m": {"before": before[0], "after": after[0]},
               "note": args.note, "stages": stages, "latency": latency, "generation": parity,
               "command": f"attnopt run {args.model} --out {args.out} --seq {args.seq} --past {args.past} "
                          f"--threads {args.threads} --runs {args.runs}"}
    stem = f"decoder_run_{args.model}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(content, indent=2, default=lambda v: None) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(content, latency_sentences(latency)))
    print((RESULTS / f"{stem}.md").read_text())


def markdown(content: dict, sentences: list[str]) -> str:
    m, load = content["machine"], content["load_average_1m"]
    lines = [f"# attnopt run on a decoder: {content['model']}", "", f"`{content['command']}`", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, onnxruntime {m['onnxruntime']}, {m['date']}. "
             f"Load average (1 min) {load['before']:.1f} before and {load['after']:.1f} after this script; stages: "
             + ", ".join(f"{k} {v}" for k, v in content["stages"].items()) + "."]
    if content["note"]:
        lines += ["", content["note"]]
    lines += ["", "Generation parity (every step of prefill, decode and chunked prefill; greedy tokens against "
              "Hugging Face generate):", ""]
    for path, g in content["generation"].items():
        tokens = g.get("tokens") or {}
        lines.append(f"- `{Path(path).parent.name}/{Path(path).name}` ({g['precision']}): "
                     f"{'pass' if g['passed'] else 'FAIL ' + g['first_failure']}; greedy tokens "
                     f"{'identical' if tokens.get('identical') else 'differ: ' + str(tokens.get('first_divergence'))}")
    rows = content["latency"].get("rows", [])
    lines += ["", "| backend | phase | past | seq | p50 ms | p90 ms | tokens/s | rounds | vs torch-cpu |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"| {r['backend']} | {r['phase']} | {r['past']} | {r['seq']} | {r['p50_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['tokens_per_s']:.0f} | {r['rounds']} | {speedup} |")
    lines += ["", *[f"- {s}" for s in sentences], *[f"> warning: {w}" for w in content["latency"].get("warnings", [])]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
