"""`attnopt generate`: text in, streamed text out, from an exported decoder folder (ONNX Runtime through
attnopt's loop, or onnxruntime-genai) or from a MODEL spec (PyTorch through the same loop)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from attnopt.errors import AttnoptError
from attnopt.generation.artifact_folder import is_decoder_folder, open_decoder_folder
from attnopt.generation.loop import Generation, greedy

BACKENDS = ("auto", "ort", "genai", "torch")


@dataclass
class GenerateResult:
    text: str
    tokens: list[int]
    prompt_tokens: int
    backend: str
    time_to_first_token_s: float
    tokens_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """The prompt through the chat template where the tokenizer has one (and chat is on), else as is."""
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def check_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    if context and prompt_tokens + max_new_tokens > context:
        raise AttnoptError(f"the prompt is {prompt_tokens} tokens; with --max-new-tokens {max_new_tokens} that is "
                           f"beyond the model's context of {context} tokens",
                           "shorten the prompt or lower --max-new-tokens")


class TextStream:
    """Turns the tokens of one row into text as they come, emitting only what is new (a token may end in
    the middle of a character; decoding the whole row each time keeps the text right)."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.tokens: list[int] = []
        self.text = ""

    def __call__(self, step_tokens: list[int]) -> None:
        self.tokens.append(step_tokens[0])
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.text) and self.on_text and len(text) > len(self.text):
            self.on_text(text[len(self.text):])
        self.text = text


def generate(source: str | Path, prompt: str, *, max_new_tokens: int = 64, backend: str = "auto",
             chat: bool = True, on_text: Callable[[str], None] | None = None) -> GenerateResult:
    if backend not in BACKENDS:
        raise AttnoptError(f"unknown backend {backend!r}", f"choose one of: {', '.join(BACKENDS)}")
    if max_new_tokens < 1:
        raise AttnoptError("--max-new-tokens must be at least 1")
    path = Path(source)
    if is_decoder_folder(path) and backend != "torch":
        return _from_folder(path, prompt, max_new_tokens, "ort" if backend == "auto" else backend, chat, on_text)
    if backend in ("ort", "genai"):
        raise AttnoptError(f"the {backend} backend runs an exported folder, and {source} is not one",
                           f"export it first: attnopt export {source} -o DIR/model.onnx, then generate from DIR")
    return _from_model(str(source), prompt, max_new_tokens, chat, on_text)


def _from_folder(path: Path, prompt: str, max_new_tokens: int, backend: str, chat: bool,
                 on_text: Callable[[str], None] | None) -> GenerateResult:
    from transformers import AutoTokenizer

    from attnopt.runtime import OrtRunner

    folder = open_decoder_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder.folder))
    ids = prompt_ids(tokenizer, prompt, chat)
    check_context(len(ids), max_new_tokens, folder.layout.max_positions)
    stream = TextStream(tokenizer, on_text)
    if backend == "genai":
        from attnopt.generation.genai_backend import genai_greedy

        _check_genai_runs(folder.folder, folder.model)
        generation = genai_greedy(folder.folder, ids, max_new_tokens, stream)
    else:
        from attnopt.generation.shared_cache import SharedCacheStep

        with OrtRunner(folder.model) as runner:
            # as onnxruntime-genai runs the folder: one buffer for past and present where its config says so
            step = SharedCacheStep(runner.session, folder.layout, capacity=len(ids) + max_new_tokens) \
                if folder.shares_buffer else runner.infer
            generation = greedy(step, [ids], folder.layout, max_new_tokens, eos_ids=folder.eos_ids,
                                pad_id=folder.pad_id, on_tokens=stream)
    return _result(stream, generation, len(ids), backend)


def _check_genai_runs(folder: Path, model: Path) -> None:
    """onnxruntime-genai runs the file its genai_config.json names, whatever file was asked for."""
    from attnopt.generation.runtime_folder import named_model

    named = named_model(folder)
    if named != model.name:
        raise AttnoptError(f"onnxruntime-genai would run {named or 'nothing'} from {folder}, not {model.name}",
                           "generate with --backend ort, or give the artifact a folder of its own")


def _from_model(spec: str, prompt: str, max_new_tokens: int, chat: bool,
                on_text: Callable[[str], None] | None) -> GenerateResult:
    from attnopt.models import load_model
    from attnopt.parity.generation import special_ids, torch_step

    loaded = load_model(spec, "causal-lm", cache=True)
    tokenizer = loaded.load_tokenizer()
    ids = prompt_ids(tokenizer, prompt, chat)
    check_context(len(ids), max_new_tokens, loaded.cache.max_positions)
    eos_ids, pad_id = special_ids(loaded)
    stream = TextStream(tokenizer, on_text)
    generation = greedy(torch_step(loaded), [ids], loaded.cache, max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                        on_tokens=stream)
    return _result(stream, generation, len(ids), "torch")


def _result(stream: TextStream, generation: Generation, prompt_tokens: int, backend: str) -> GenerateResult:
    # time to first token: the prefill step (session or model already loaded, prompt already tokenized)
    return GenerateResult(stream.text, generation.tokens[0], prompt_tokens, backend, generation.prefill_s,
                          generation.tokens_per_s)
