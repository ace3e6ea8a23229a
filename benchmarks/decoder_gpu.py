"""Decoders on a CUDA GPU: a Llama the shape of SmolLM2-135M (30 layers, 576 wide, 9/3 heads, random init: no
weights travel to the GPU machine), greedy generation with a KV cache on PyTorch eager (CUDA) against ONNX
Runtime's CUDA execution provider running the raw export, attnopt's `--target ort` graph (GroupQueryAttention)
and its fp16 model. Per artifact: the op types ONNX Runtime's profile shows on the CPU for one prefill step,
prefill and per-token decode latency, and greedy tokens agreeing with PyTorch before the first difference.

    python benchmarks/decoder_gpu.py                   # needs a CUDA GPU and onnxruntime-gpu
    python benchmarks/decoder_gpu.py --device cpu --layers 2 --out /tmp/r   # the same flow on the CPU

ONNX Runtime is fed from and returns to host memory at every step (numpy feeds, as `attnopt generate` runs),
so its decode times include the copies of the cache; the rows "cache bound" bind each step's presents as the
next past with I/O binding (on the GPU, as a GPU deployment runs) and copy only the logits back. PyTorch keeps
everything on the GPU."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402


def smollm2_shaped(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2)


def _session(path: Path, device: str, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = profile
    options.profile_file_prefix = str(path.parent / "profile")  # in the run's temporary folder
    providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def placement(path: Path, device: str, feeds: dict[str, np.ndarray]) -> str:
    """Which provider ran each node of one step, from ONNX Runtime's profile: the op types left on the CPU
    (ORT keeps shape arithmetic there on purpose; a heavy op there is a kernel CUDA lacks for that type)."""
    session = _session(path, device, profile=True)
    host_step(session)(feeds)
    trace = Path(session.end_profiling())
    nodes: dict[str, tuple[str, str]] = {}
    for event in json.loads(trace.read_text()):
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            nodes[event["name"].rsplit("_kernel_time", 1)[0]] = (args["provider"], args.get("op_name", "?"))
    trace.unlink()
    on_cpu: dict[str, int] = {}
    for provider, op in nodes.values():
        if provider == "CPUExecutionProvider":
            on_cpu[op] = on_cpu.get(op, 0) + 1
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(on_cpu.items(), key=lambda item: -item[1]))
    return f"{len(nodes) - sum(on_cpu.values())} of {len(nodes)} nodes off the CPU; on the CPU: {listed or 'none'}"


def host_step(session) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One step fed from and returned to host memory (numpy), as `attnopt generate` runs."""
    from attnopt.runtime.onnxruntime import as_declared, float_input_types

    names = [o.name for o in session.get_outputs()]
    wanted, floats = {i.name for i in session.get_inputs()}, float_input_types(session)

    def step(feeds: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(names, session.run(None, as_declared({k: v for k, v in feeds.items() if k in wanted},
                                                             floats))))
    return step


def bound_step(session, device: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One step with the KV cache kept where the session runs (I/O binding; on CUDA, the GPU): each step's
    presents are bound as the next step's past without a host copy; only the token ids, mask and positions go
    in from the host and only the logits come back."""
    import onnxruntime as ort

    from attnopt.runtime.onnxruntime import as_declared, float_input_types

    names = [o.name for o in session.get_outputs()]
    wanted, floats = {i.name for i in session.get_inputs()}, float_input_types(session)

    def step(feeds: dict[str, Any]) -> dict[str, Any]:
        binding = session.io_binding()
        for name, value in as_declared(feeds, floats).items():
            if name not in wanted:
                continue
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu" if name == "logits" else device)
        session.run_with_iobinding(binding)
        outputs = dict(zip(names, binding.get_outputs()))
        outputs["logits"] = outputs["logits"].numpy()
        return outputs
    return step


def ort_greedy(path: Path, device: str, prompt: list[int], layout, new: int,
               cache_bound: bool = False) -> tuple[list[int], float, float]:
    from attnopt.generation.loop import greedy

    session = _session(path, device)
    step = bound_step(session, device) if cache_bound else host_step(session)
    greedy(step, [prompt], layout, 4)  # warm-up
    result = greedy(step, [prompt], layout, new)
    return result.tokens[0], result.prefill_s * 1000, statistics.median(result.decode_s) * 1000


def torch_greedy(loaded, device: str, prompt: list[int], new: int, half: bool = False) -> tuple[list[int], float, float]:
    """Hugging Face generate (eager, dynamic cache); `half` converts the model to fp16 for good (run it last)."""
    import torch

    model = loaded.hf_model.to(device, torch.float16 if half else torch.float32).eval()
    ids = torch.tensor([prompt], device=device)

    def run(count: int) -> tuple[list[int], float]:
        begin = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                                 min_new_tokens=count, do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()
        return out[0, len(prompt):].tolist(), (time.perf_counter() - begin) * 1000

    run(4)  # warm-up
    one = statistics.median(run(1)[1] for _ in range(3))
    tokens, many = run(new)
    model.cpu()
    return tokens, one, (many - one) / (new - 1)


def agreeing(tokens: list[int], reference: list[int]) -> int:
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return min(len(tokens), len(reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="greedy tokens")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    import attnopt
    from attnopt.generation.loop import first_feeds
    from attnopt.models.huggingface import load_from_config

    torch.manual_seed(0)
    loaded = load_from_config(smollm2_shaped(args.layers), "causal-lm", {"kind": "config", "spec": "smollm2-shaped"})
    prompt = np.random.default_rng(0).integers(3, 49152, size=args.prompt).tolist()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        begin = time.perf_counter()
        raw = attnopt.export(loaded, work / "raw" / "model.onnx", verify=False).path
        optimized = attnopt.optimize(raw, work / "ort" / "model.onnx", target="ort")  # verified on this onnxruntime
        fused = optimized.path
        forms = optimized.report["fusions"]["attention"]["forms"]
        form = f"{forms}; {optimized.report.get('group_query_attention', '')}"
        # written even if it misses the tolerance (random weights' near-tied logits): its greedy tokens still say
        # fp16 three ways at the graph's edges: everything fp32 (--fp32-cache), the KV cache fp16 (the default),
        # the logits fp16 too (--no-keep-io-types)
        edged = attnopt.quantize(fused, work / "fp16-fp32-edges" / "model.onnx", precision="fp16", fp32_cache=True,
                                 keep_failed=True)
        halved = attnopt.quantize(fused, work / "fp16" / "model.onnx", precision="fp16", keep_failed=True)
        whole = attnopt.quantize(fused, work / "fp16-io" / "model.onnx", precision="fp16", keep_io_types=False,
                                 keep_failed=True)
        for result in (edged, halved, whole):
            if not result.passed:
                print(f"{result.path.parent.name} misses its tolerance: {result.report['failure']}", flush=True)
        print(f"exported, optimized and converted in {time.perf_counter() - begin:.0f} s; attention: {form}", flush=True)
        reference, prefill, decode = torch_greedy(loaded, args.device, prompt, args.new)
        rows.append({"runner": f"PyTorch eager ({args.device}, fp32)", "placement": "", "prefill_ms": prefill,
                     "decode_ms_per_token": decode, "greedy_agreeing": f"reference ({len(reference)})"})
        print(rows[-1], flush=True)
        runs = (("ORT, raw export (fp32)", raw, False), ("ORT, attnopt --target ort (fp32)", fused, False),
                ("ORT, attnopt --target ort (fp32), cache bound", fused, True),
                ("ORT, attnopt --target ort, fp16, fp32 at the edges (--fp32-cache)", edged.path, False),
                ("ORT, attnopt --target ort, fp16, fp32 at the edges, cache bound", edged.path, True),
                ("ORT, attnopt --target ort, fp16 (its cache fp16 at the edges)", halved.path, False),
                ("ORT, attnopt --target ort, fp16 (its cache fp16 at the edges), cache bound", halved.path, True),
                ("ORT, attnopt --target ort, fp16 with fp16 cache and logits (--no-keep-io-types)", whole.path, False),
                ("ORT, attnopt --target ort, fp16 with fp16 cache and logits, cache bound", whole.path, True))
        for name, path, cache_bound in runs:
            first = first_feeds(np.asarray([prompt]), np.ones((1, len(prompt)), np.int64), loaded.cache)
            row: dict[str, Any] = {"runner": name}
            try:
                # a bound cache runs the same graph as the row before: placed once
                row["placement"] = "as above" if cache_bound else placement(path, args.device, first)
                tokens, prefill, decode = ort_greedy(path, args.device, prompt, loaded.cache, args.new,
                                                     cache_bound)
                row.update(prefill_ms=prefill, decode_ms_per_token=decode,
                           greedy_agreeing=f"{agreeing(tokens, reference)}/{len(reference)}")
            except Exception as error:  # report the failure in the table rather than lose the other rows
                row["error"] = str(error).strip().splitlines()[0][:200]
            rows.append(row)
            print(row, flush=True)
        tokens, prefill, decode = torch_greedy(loaded, args.device, prompt, args.new, half=True)
        rows.append({"runner": f"PyTorch eager ({args.device}, fp16)", "placement": "", "prefill_ms": prefill,
                     "decode_ms_per_token": decode,
                     "greedy_agreeing": f"{agreeing(tokens, reference)}/{len(reference)}"})
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else machine()["cpu"]
    import onnxruntime

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decoder_gpu.json").write_text(json.dumps({"device": device, "torch": torch.__version__,
                                                          "onnxruntime": onnxruntime.__version__, "attention": form,
                                                          "rows": rows},
                                                         indent=2))
    cols = ["runner", "placement", "prefill_ms", "decode_ms_per_token", "greedy_agreeing", "error"]
    lines = [f"# Decoder on {device}", "",
             f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; SmolLM2-shaped Llama, "
             f"{args.layers} layers, random init; batch 1, prompt {args.prompt} tokens, {args.new} greedy tokens; "
             "ORT fed from host memory at every step, except the rows whose cache stays bound on the device; TF32 off.",
             f"attnopt --target ort attention: {form}.",
             f"Command: `python benchmarks/decoder_gpu.py --device {args.device} --layers {args.layers}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    (args.out / "decoder_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
