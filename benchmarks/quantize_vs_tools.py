"""attnopt int8 against ONNX Runtime's own quantizers, side by side in one run on the same fused fp32
model: quantize_dynamic (default; per-channel; per-channel on MatMul only, its most accurate setting)
and quantize_static (Q/DQ). Accuracy on real sentences that are not the calibration set (token-level
and mean-pooled sentence-embedding cosine against fp32); latency at batch 1, seq 128 on ONNX Runtime
CPU, all variants timed round-robin, with ONNX Runtime's defaults and with denormals flushed to zero.
Then bert-base: int8 speed and size against fp32.

    python benchmarks/quantize_vs_tools.py            # MiniLM and bert-base (several minutes)
    python benchmarks/quantize_vs_tools.py --quick    # MiniLM only
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common import ort_session, time_interleaved, write_results

import attnopt

DATA = Path(__file__).parent / "data"
EVAL, CALIBRATION = DATA / "sentences-eval.txt", DATA / "sentences-calibration.txt"


def tokenize(lines: list[str], tokenizer_path: str, length: int | None = None) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    padding: Any = "max_length" if length else True
    encoded = tokenizer(lines, padding=padding, max_length=length, truncation=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in encoded.items()}


def accuracy(path: Path, reference: np.ndarray, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    out = ort_session(path).run(None, feeds)[0].astype(np.float64)
    ref = reference.astype(np.float64)
    mask = feeds["attention_mask"].astype(bool)

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    def pool(h: np.ndarray) -> np.ndarray:
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    token, sentence = cos(out, ref)[mask], cos(pool(out), pool(ref))
    values = {"token_cos_mean": token.mean(), "token_cos_min": token.min(), "sentence_cos_mean": sentence.mean(),
              "sentence_cos_min": sentence.min()}
    return {k: f"{float(v):.5f}" for k, v in values.items()}  # cosines need more digits than the table's default


def keeps_mask(path: Path) -> str:
    """QAttention without a mask input attends to padding (onnxruntime's quantizer drops attention_bias)."""
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    q = [n for n in nodes if n.op_type == "QAttention"]
    if not q:
        return "yes"
    return "yes" if all(len(n.input) > 5 and n.input[5] for n in q) else "NO (padding attended)"


def ort_variants(fused: Path, work: Path, feeds_for_static: list[dict[str, np.ndarray]]) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    out = {}
    quantize_dynamic(fused, work / "qd.onnx", weight_type=QuantType.QInt8)
    out["ORT quantize_dynamic (default)"] = work / "qd.onnx"
    quantize_dynamic(fused, work / "qdpc.onnx", per_channel=True, weight_type=QuantType.QInt8)
    out["ORT quantize_dynamic (per-channel)"] = work / "qdpc.onnx"
    quantize_dynamic(fused, work / "qdmm.onnx", per_channel=True, op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8)
    out["ORT quantize_dynamic (per-channel, MatMul only)"] = work / "qdmm.onnx"

    class Reader:
        def __init__(self) -> None:
            self.items = iter(feeds_for_static)

        def get_next(self):
            return next(self.items, None)

    quantize_static(fused, work / "qs.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    out["ORT quantize_static (Q/DQ, MinMax)"] = work / "qs.onnx"
    return out


def minilm(work: Path, rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    exported = attnopt.export("minilm", work / "minilm.onnx")
    fused = work / "minilm.ort.onnx"
    attnopt.optimize(exported.path, fused, target="ort")
    tokenizer_path = json.loads(exported.sidecar.read_text())["source"]["path"]
    eval_lines = [line.strip() for line in EVAL.read_text().splitlines() if line.strip()]
    calib_lines = [line.strip() for line in CALIBRATION.read_text().splitlines() if line.strip()]
    feeds = tokenize(eval_lines, tokenizer_path)
    reference = ort_session(fused).run(None, feeds)[0]
    one = tokenize(eval_lines[:1], tokenizer_path, length=128)  # one sentence padded to 128

    variants = {"fused fp32 (attnopt --target ort)": fused}
    static_feeds = [tokenize(calib_lines[i:i + 8], tokenizer_path, length=64) for i in range(0, len(calib_lines), 8)]
    variants.update(ort_variants(fused, work, static_feeds))
    reports = {}
    for label, cosine in (("attnopt int8 (default tolerance 0.99)", None), ("attnopt int8 --cosine 0.995", 0.995),
                          ("attnopt int8 --cosine 0.998", 0.998)):
        path = work / f"attnopt-{cosine or 'default'}.int8.onnx"
        result = attnopt.quantize(fused, path, precision="int8", calibration=CALIBRATION,
                                  tolerance={"cosine": cosine}, keep_failed=True)
        variants[label], reports[label] = path, result.report

    timings = {}
    for flush in (False, True):
        sessions = {label: ort_session(path, flush_denormals=flush) for label, path in variants.items()}
        timings[flush] = time_interleaved(sessions, one, rounds=rounds)
    base = {flush: timings[flush]["fused fp32 (attnopt --target ort)"]["p50_ms"] for flush in timings}
    rows = []
    for label, path in variants.items():
        row = {"variant": label, **accuracy(path, reference, feeds), "mask kept": keeps_mask(path),
               "p50 ms": timings[False][label]["p50_ms"], "speedup": base[False] / timings[False][label]["p50_ms"],
               "p50 ms (DAZ)": timings[True][label]["p50_ms"],
               "speedup (DAZ)": base[True] / timings[True][label]["p50_ms"],
               "size MB": sum(f.stat().st_size for f in [path]) / 1e6}
        if label in reports:
            row["fp32 layers kept"] = sum(1 for k in reports[label]["kept"] if "sensitive" in k["reason"])
        rows.append(row)
        print(row)
    notes = [
        "Real all-MiniLM-L6-v2. Accuracy: the 32 sentences of benchmarks/data/sentences-eval.txt (padded to the "
        "longest), against the fused fp32 model; attnopt calibrates on the 32 different sentences of "
        "sentences-calibration.txt. Latency: one sentence padded to 128 tokens, batch 1, 2 threads, variants "
        "timed round-robin; 'DAZ' runs set ONNX Runtime's session.set_denormal_as_zero (masked attention makes "
        "denormals on x86, which cost 15-25%).",
        "ONNX Runtime's quantize_dynamic turns the fused Attention into QAttention and drops its attention_bias "
        "input (QAttention has none), so padding tokens are attended: that is why its default and per-channel "
        "rows are fast and inaccurate. attnopt proves the bias is a key-padding mask and passes the mask as "
        "QAttention's mask_index instead.",
    ]
    return rows, notes


def bert_base(work: Path, rounds: int) -> list[dict[str, Any]]:
    exported = attnopt.export("bert-base", work / "bert-base.onnx")
    fused = work / "bert-base.ort.onnx"
    attnopt.optimize(exported.path, fused, target="ort")
    int8 = work / "bert-base.int8.onnx"
    result = attnopt.quantize(fused, int8, precision="int8", keep_failed=True)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
            "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    sessions = {"fp32": ort_session(fused, flush_denormals=True), "int8": ort_session(int8, flush_denormals=True)}
    timing = time_interleaved(sessions, feed, rounds=rounds)
    acc = result.report["accuracy"]
    return [{"variant": f"bert-base {name}", "p50 ms (DAZ)": timing[name]["p50_ms"],
             "speedup (DAZ)": timing["fp32"]["p50_ms"] / timing[name]["p50_ms"],
             "size MB": path.stat().st_size / 1e6,
             "token_cos_mean": f"{acc['token_cosine'] if name == 'int8' else 1.0:.5f}"}
            for name, path in (("fp32", fused), ("int8", int8))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = minilm(Path(tmp), args.rounds)
        if not args.quick:
            rows += bert_base(Path(tmp), args.rounds)
            notes.append("bert-base (random init, random-token calibration): fp32 and attnopt int8 (default "
                         "tolerance), batch 1 seq 128 without padding, DAZ on; token cosine measured by attnopt "
                         "on its calibration inputs.")
    columns = ["variant", "sentence_cos_mean", "sentence_cos_min", "token_cos_mean", "token_cos_min", "mask kept",
               "p50 ms", "speedup", "p50 ms (DAZ)", "speedup (DAZ)", "size MB", "fp32 layers kept"]
    path = write_results("quantize_vs_tools", rows, columns, "int8: attnopt against ONNX Runtime's quantizers", notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
