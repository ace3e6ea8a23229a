"""The GPU path: PyTorch eager (CUDA) against ONNX Runtime's CUDA execution provider running the raw
export and attnopt's `ort` target, with inputs and outputs bound on the GPU (no host copies timed).

    python benchmarks/gpu_fusion.py --out benchmarks/results     # needs a CUDA GPU and onnxruntime-gpu

TensorRT engines (fp16/int8) join this table once the TensorRT layer lands."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import attnopt
from attnopt.models import load_model

CASES = [("bert-base", 1, 128), ("bert-base", 8, 128), ("gpt2", 1, 128), ("gpt2", 8, 128), ("llama-tiny", 1, 128)]


def time_ms(fn, sync, warmup: int = 10, runs: int = 100) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (runs - 1))]}


def torch_cuda(loaded, feeds: dict[str, np.ndarray]) -> tuple[dict[str, float], list[np.ndarray]]:
    import torch

    module = loaded.module.cuda().eval()
    args = [torch.from_numpy(feeds[n]).cuda() for n in loaded.input_names]
    with torch.inference_mode():
        stats = time_ms(lambda: module(*args), torch.cuda.synchronize)
        out = [o.float().cpu().numpy() for o in module(*args)]
    module.cpu()
    return stats, out


def ort_cuda(path: Path, feeds: dict[str, np.ndarray]) -> tuple[dict[str, float], list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])
    binding = session.io_binding()
    for i in session.get_inputs():
        binding.bind_ortvalue_input(i.name, ort.OrtValue.ortvalue_from_numpy(feeds[i.name], "cuda", 0))
    for o in session.get_outputs():
        binding.bind_output(o.name, "cuda", 0)
    stats = time_ms(lambda: session.run_with_iobinding(binding), binding.synchronize_outputs)
    return stats, [v.numpy() for v in binding.get_outputs()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, batch, seq in CASES:
            loaded = load_model(preset)
            raw = Path(tmp) / f"{preset}.onnx"
            fused = Path(tmp) / f"{preset}.ort.onnx"
            if not raw.exists():
                attnopt.export(loaded, raw, verify=False)
                attnopt.optimize(raw, fused, target="ort", verify=False)
            feeds = {k: v.numpy() for k, v in loaded.make_inputs(batch, seq, seed=3).items()}
            base, expected = torch_cuda(loaded, feeds)
            rows.append({"model": preset, "shape": f"{batch}x{seq}", "runner": "PyTorch eager (CUDA, fp32)", **base})
            for name, path in (("ORT CUDA, raw export", raw), ("ORT CUDA, attnopt --target ort", fused)):
                stats, got = ort_cuda(path, feeds)
                err = float(max(np.abs(g - e).max() for g, e in zip(got, expected)))
                rows.append({"model": preset, "shape": f"{batch}x{seq}", "runner": name, **stats,
                             "max abs err": err, "speedup vs eager": base["p50_ms"] / stats["p50_ms"]})
            for row in rows[-3:]:
                print(row, flush=True)
    gpu = torch.cuda.get_device_name(0)
    import onnxruntime

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_fusion.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                                         "onnxruntime": onnxruntime.__version__, "rows": rows}, indent=2))
    cols = ["model", "shape", "runner", "p50_ms", "p90_ms", "speedup vs eager", "max abs err"]
    lines = [f"# GPU path: {gpu}", "", f"torch {torch.__version__}, onnxruntime-gpu {onnxruntime.__version__}; fp32, "
             "TF32 off; inputs and outputs bound on the GPU; 100 runs after 10 warm-up runs.",
             "Command: `python benchmarks/gpu_fusion.py`", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")
    (args.out / "gpu_fusion.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
