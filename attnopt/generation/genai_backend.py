"""onnxruntime-genai as a generation backend: it loads the exported folder as it is (genai_config.json),
with no attnopt code in its loop. attnopt only tokenizes, so both backends see the same token ids."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from attnopt.errors import MissingDependencyError
from attnopt.generation.loop import Generation


def genai_module():
    try:
        import onnxruntime_genai
    except ImportError as exc:
        raise MissingDependencyError("the genai backend needs onnxruntime-genai",
                                     "pip install onnxruntime-genai (or 'attnopt[llm]')") from exc
    return onnxruntime_genai


def genai_greedy(folder: Path, prompt: list[int], max_new_tokens: int,
                 on_tokens: Callable[[list[int]], None] | None = None) -> Generation:
    """Greedy generation of one prompt by onnxruntime-genai; stops at its end-of-sequence tokens."""
    og = genai_module()
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    result = Generation([[]])
    start = time.perf_counter()
    generator.append_tokens(prompt)
    first = True
    while not generator.is_done() and len(result.tokens[0]) < max_new_tokens:
        if not first:
            start = time.perf_counter()
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        elapsed = time.perf_counter() - start
        if first:
            result.prefill_s, first = elapsed, False
        else:
            result.decode_s.append(elapsed)
        result.tokens[0].append(token)
        if on_tokens:
            on_tokens([token])
    return result
