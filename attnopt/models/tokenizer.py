"""The model's own tokenizer, from a folder or from the GGUF file that also holds the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnopt.errors import AttnoptError

#: any one of these makes a folder's tokenizer loadable by transformers
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model")


def has_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | None, gguf_file: str | None = None) -> Any:
    from transformers import AutoTokenizer

    if path is None or (not gguf_file and not has_tokenizer(path)):
        raise AttnoptError(f"{path or 'this model'} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)",
                           "export from a model folder that ships its tokenizer, or pass token ids")
    if gguf_file:
        return AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    return AutoTokenizer.from_pretrained(path)
