"""fp16 and int8 on every preset of the zoo: does `attnopt quantize` meet its default tolerance against
fp32, what did it keep in fp32, how much smaller is the model, and does `attnopt check` pass the artifact
against PyTorch (at shapes the calibration never saw)?

    python benchmarks/precision_zoo.py            # every preset but llama-800m (several minutes)
    python benchmarks/precision_zoo.py --quick    # the tiny ones
    python benchmarks/precision_zoo.py --only vit-tiny    # re-run one preset, keep the other rows
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

from common import merge_rows, write_results

import attnopt

PRESETS = ["bert-tiny", "minilm", "gpt2-tiny", "llama-tiny", "vit-tiny", "bert-base", "gpt2"]
QUICK = PRESETS[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", metavar="PRESET",
                        help="Re-run only this preset and replace its rows in the committed table.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for preset in args.only or (QUICK if args.quick else PRESETS):
            exported = attnopt.export(preset, work / f"{preset}.onnx", verify=False)
            fused = work / f"{preset}.ort.onnx"
            attnopt.optimize(exported.path, fused, target="ort", verify=False)
            for precision in ("fp16", "int8"):
                out = work / f"{preset}.{precision}.onnx"
                result = attnopt.quantize(fused, out, precision=precision, keep_failed=True)
                report = result.report
                checked = attnopt.check(preset, [out], shapes=[(1, 2), (2, 16), (4, 128)])
                acc = report["accuracy"]
                rows.append({"model": preset, "precision": precision, "method": report["method"],
                             "meets tolerance": "yes" if result.passed else f"NO: {report['failure']}",
                             "max abs": acc.get("max_abs"), "token cos": f"{acc.get('token_cosine', 0):.6f}",
                             "nodes": ", ".join(f"{n} {p}" for p, n in report["nodes"].items()),
                             "kept fp32": len(report["kept"]), "size ratio": report["size"]["ratio"],
                             "check vs PyTorch": "pass" if checked.passed else
                             f"FAIL: {checked.failures[0].metrics.reason}",
                             "seconds": report["seconds"]})
                print(rows[-1])
    if args.only:
        rows = merge_rows("precision_zoo", rows, args.only, PRESETS)
    columns = ["model", "precision", "method", "meets tolerance", "max abs", "token cos", "nodes", "kept fp32",
               "size ratio", "check vs PyTorch", "seconds"]
    notes = ["Each preset exported, optimized for `ort`, then `attnopt quantize --precision fp16|int8` with default "
             "tolerances and random-token calibration (4 batches); `attnopt check` against PyTorch at 1x2, 2x16 and "
             "4x128 with the precision's default tolerances. Random-init presets except minilm (real weights)."]
    path = write_results("precision_zoo", rows, columns, "fp16 and int8 across the zoo", notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
