"""Every random-init decoder preset, through both exporters with its KV cache, then optimized for ort
and onnx: which fused attention each layer became, whether the rotary went inside it, and whether the
fused model still passes parity over generations (left-padded batch, decode, chunked prefill, and
Hugging Face's greedy tokens). The test suite runs all presets through TorchScript and five through
dynamo; this runs all of them through both.

    python benchmarks/decoder_presets.py [--exporters dynamo torchscript] [--presets NAME ...]

Writes benchmarks/results/decoder_presets.md and .json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import attnopt
from attnopt.errors import AttnoptError
from attnopt.models.presets import DECODER_PRESETS, PRESETS

RESULTS = Path(__file__).parent / "results"
TARGETS = ("ort", "onnx")


def _row(preset: str, exporter: str, folder: Path) -> dict:
    folder.mkdir(parents=True)
    start = time.perf_counter()
    exported = attnopt.export(preset, folder / "export" / "model.onnx", exporter=exporter)
    row = {"preset": preset, "exporter": exported.exporter, "export_s": round(time.perf_counter() - start, 1),
           "export_parity": exported.ok, "layers": PRESETS[preset].config().num_hidden_layers}
    for target in TARGETS:
        output = folder / target / "model.onnx"
        output.parent.mkdir()
        try:
            report = attnopt.optimize(exported.path, output, target=target).report
        except AttnoptError as exc:
            row[target] = {"error": str(exc)}
            continue
        fusions = report["fusions"]
        checked = attnopt.check(preset, [output])
        row[target] = {"attention": f"{fusions['attention']['fused']}/{fusions['attention']['sites']}",
                       "forms": fusions["attention"]["forms"], "rotary": fusions["rotary"]["forms"],
                       "unfused": [u["reason"] for u in fusions["attention"]["unfused"]],
                       "parity": checked.passed}
    return row


def _cell(entry: dict) -> str:
    if "error" in entry:
        return f"error: {entry['error']}"
    forms = ", ".join(f"{n} {form}" for form, n in entry["forms"].items()) or "; ".join(sorted(set(entry["unfused"])))
    rotary = ", ".join(f"{n} {form}" for form, n in entry["rotary"].items())
    return f"{entry['attention']} {forms}" + (f"; rotary: {rotary}" if rotary else "") + \
        f"; parity {'pass' if entry['parity'] else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporters", nargs="+", default=["dynamo", "torchscript"])
    parser.add_argument("--presets", nargs="+", default=[p.name for p in DECODER_PRESETS])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in args.exporters:
            for preset in args.presets:
                rows.append(_row(preset, exporter, Path(tmp) / exporter / preset))
                print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    lines = ["# Decoder presets: KV-cache export, cache-aware fusion, parity over generations", "",
             f"`python benchmarks/decoder_presets.py` on {machine}, {time.strftime('%Y-%m-%d')}.", "",
             "| preset | exporter | export s | ort | onnx |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['preset']} | {r['exporter']} | {r['export_s']} | {_cell(r['ort'])} | {_cell(r['onnx'])} |"
              for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decoder_presets.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "decoder_presets.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
