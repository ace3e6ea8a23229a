"""attnopt's `ort` target (fp32, and int8) against what users would pick instead, side by side on one
machine: the raw export (ONNX Runtime with ORT_ENABLE_ALL), ONNX Runtime's transformers optimizer,
onnxscript's ort_fusions, ONNX Runtime's quantize_dynamic and PyTorch eager. Records fusion coverage,
CPU latency and the error against PyTorch.

    python benchmarks/fusion_vs_tools.py            # all models (several minutes on 2 cores)
    python benchmarks/fusion_vs_tools.py --quick    # the tiny ones
    python benchmarks/fusion_vs_tools.py --only gpt2    # re-run one model, keep the other rows
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from common import merge_rows, ort_session, time_interleaved, write_results

import attnopt
from attnopt.models import load_model
from attnopt.parity.padding import unpadded
from attnopt.runtime import TorchRunner

ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "QAttention"}
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
            "SkipSimplifiedLayerNormalization", "RMSNormalization"}
GELU_OPS = {"Gelu", "FastGelu", "BiasGelu"}

#: (preset, task, batch, seq, model type for ONNX Runtime's optimizer)
CASES = [
    ("bert-base", "feature-extraction", 1, 128, "bert"),
    ("bert-base", "feature-extraction", 8, 128, "bert"),
    ("minilm", "feature-extraction", 1, 128, "bert"),
    ("gpt2", "feature-extraction", 1, 128, "gpt2"),
    ("llama-tiny", "feature-extraction", 1, 128, "gpt2"),
]
QUICK = [("bert-tiny", "feature-extraction", 1, 128, "bert"), ("llama-tiny", "feature-extraction", 1, 128, "gpt2")]


def coverage(path: Path) -> dict[str, int]:
    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"attention_ops": sum(ops[o] for o in ATTENTION_OPS), "softmax_left": ops["Softmax"],
            "norm_ops": sum(ops[o] for o in NORM_OPS), "gelu_ops": sum(ops[o] for o in GELU_OPS)}


def ort_transformers(src: Path, dst: Path, model_type: str) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0).save_model_to_file(str(dst))


def onnxscript_fusions(src: Path, dst: Path, _model_type: str) -> None:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(ir.load(src))
    ir.save(model, dst)


def attnopt_ort(src: Path, dst: Path, _model_type: str) -> None:
    attnopt.optimize(src, dst, target="ort", force=True)


def ort_quantize_dynamic(src: Path, dst: Path, _model_type: str) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(src, dst, per_channel=True)


def attnopt_ort_int8(src: Path, dst: Path, _model_type: str) -> None:
    fused = dst.with_name(dst.stem + ".fused.onnx")
    attnopt.optimize(src, fused, target="ort", force=True)
    attnopt.quantize(fused, dst, precision="int8", force=True, keep_failed=True)


TOOLS: list[tuple[str, Callable[[Path, Path, str], None] | None]] = [
    ("raw export (ORT_ENABLE_ALL)", None),
    ("onnxruntime.transformers optimizer", ort_transformers),
    ("onnxscript ort_fusions", onnxscript_fusions),
    ("attnopt --target ort", attnopt_ort),
    ("ORT quantize_dynamic (per-channel) on the raw export", ort_quantize_dynamic),
    ("attnopt --target ort, then quantize int8", attnopt_ort_int8),
]
EAGER = "PyTorch eager"


class EagerSession:
    """PyTorch eager behind the two methods the timing loop calls on an ONNX Runtime session."""

    def __init__(self, loaded: Any, threads: int = 2):
        import torch

        torch.set_num_threads(threads)
        self.loaded, self.torch = loaded, torch

    def get_inputs(self) -> list[Any]:
        return [type("Input", (), {"name": n})() for n in self.loaded.input_names]

    def run(self, _names: Any, feed: dict[str, np.ndarray]) -> Any:
        with self.torch.inference_mode():
            return self.loaded.module(*[self.torch.from_numpy(feed[n]) for n in self.loaded.input_names])


def cosine(got: list[np.ndarray], expected: list[np.ndarray], feeds: dict[str, np.ndarray]) -> float:
    """Worst output's cosine against PyTorch over the positions the attention mask keeps (as `check`)."""
    values = []
    for g, e in zip(got, expected):
        g, e = unpadded(g, feeds).astype(np.float64).ravel(), unpadded(e, feeds).astype(np.float64).ravel()
        values.append(float(g @ e / (np.linalg.norm(g) * np.linalg.norm(e))))
    return min(values)


def run_case(folder: Path, preset: str, task: str, batch: int, seq: int, model_type: str) -> list[dict[str, Any]]:
    loaded = load_model(preset, task)
    raw = folder / f"{preset}.onnx"
    if not raw.exists():
        attnopt.export(loaded, raw, verify=False)
    feeds = {k: v.numpy() for k, v in loaded.make_inputs(batch, seq, seed=3).items()}
    with TorchRunner(loaded.module, loaded.input_names, loaded.output_names) as ref:
        expected = ref.infer(feeds)
    sites = attnopt.optimize(raw, folder / "probe.onnx", target="ort", force=True, verify=False)
    att_sites = sites.report["fusions"]["attention"]["sites"]
    rows, sessions = [], {}
    for tool, fn in TOOLS:
        row: dict[str, Any] = {"model": preset, "shape": f"{batch}x{seq}", "tool": tool, "attention sites": att_sites}
        path = raw
        try:
            if fn is not None:
                path = folder / f"{preset}.{tool.split()[0]}.onnx"
                start = time.perf_counter()
                fn(raw, path, model_type)
                row["optimize s"] = time.perf_counter() - start
            cov = coverage(path)
            row.update({"attention fused": cov["attention_ops"], "norm ops": cov["norm_ops"], "gelu ops": cov["gelu_ops"]})
            session = ort_session(path, "all")
            got = session.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})
            row["max abs err"] = float(max(np.abs(g - e).max() for g, e in zip(got, expected.values())))
            row["cosine vs PyTorch"] = f"{cosine(got, list(expected.values()), feeds):.6f}"
            sessions[tool] = session
        except Exception as exc:  # noqa: BLE001 - a tool that fails is a result too
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
    rows.append({"model": preset, "shape": f"{batch}x{seq}", "tool": EAGER, "attention sites": att_sites,
                 "max abs err": 0.0})
    sessions[EAGER] = EagerSession(loaded)
    timings = time_interleaved(sessions, feeds)
    base = timings.get(TOOLS[0][0], {}).get("p50_ms")
    for row in rows:
        row.update(timings.get(row["tool"], {}))
        if base and "p50_ms" in row:
            row["speedup vs raw"] = base / row["p50_ms"]
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", metavar="PRESET",
                        help="Re-run only this model's cases and replace its rows in the committed table.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    cases = [c for c in (QUICK if args.quick else CASES) if not args.only or c[0] in args.only]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows += run_case(Path(tmp), *case)
    if args.only:  # keep the other models' rows from the last full run
        rows = merge_rows("fusion_vs_tools", rows, args.only, [c[0] for c in CASES])
    columns = ["model", "shape", "tool", "attention sites", "attention fused", "norm ops", "gelu ops", "max abs err",
               "cosine vs PyTorch", "p50_ms", "p90_ms", "speedup vs raw", "optimize s", "error"]
    notes = ["ONNX Runtime CPU, 2 intra-op threads, ORT_ENABLE_ALL on every variant; after 5 warm-up runs, the "
             "variants of a model are timed round-robin (8 rounds of at least 8 runs and 0.25 s each) so machine "
             "drift lands on all alike. Dynamo exports at the default opset. 'attention fused' counts Attention/QAttention/MultiHeadAttention/"
             "GroupQueryAttention ops in the output; the error is against PyTorch eager on the same seeded inputs "
             "(which have padding; the cosine leaves padded positions out, as `attnopt check` does). The int8 rows "
             "use default settings: ONNX Runtime's quantize_dynamic per-channel on the raw export, and "
             "`attnopt quantize --precision int8` (random calibration, default tolerance) on attnopt's ort model. "
             "PyTorch eager runs with 2 threads in inference mode.",
             "Command: `python benchmarks/fusion_vs_tools.py`"]
    name = "fusion_vs_tools_quick" if args.quick else "fusion_vs_tools"
    print(write_results(name, rows, columns, "Fusion and CPU latency: attnopt against the alternatives", notes))


if __name__ == "__main__":
    main()
