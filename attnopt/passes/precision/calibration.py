"""Calibration inputs: seeded random valid tokens, a text file through the model's own tokenizer, or an
.npz of inputs; each checked against the model's input names, dtypes and ranks before any work. By default a
causal LM with its tokenizer at hand reads attnopt's own English sentences, anything else random tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from attnopt.errors import AttnoptError
from attnopt.exporter.sidecar import is_causal_lm
from attnopt.parity.inputs import tokenize_text
from attnopt.generation.loop import positions
from attnopt.models.inputs import resolved_shape
from attnopt.passes.feeds import input_spec, make_feeds

#: random calibration: (batch, seq) per set; short and long sequences, so ranges cover both
RANDOM_SHAPES = ((2, 16), (2, 64), (1, 128), (4, 32))
TEXT_BATCH = 8
#: what a language model with a tokenizer calibrates on by default: 32 English sentences of many kinds
#: (random token ids are far from any text, and GPTQ's second moments and the logits' top-1 are about text)
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "data" / "sentences-calibration.txt"


@dataclass
class Calibration:
    source: str  # "random", or the file's path
    feeds: list[dict[str, np.ndarray]]

    def describe(self) -> dict[str, Any]:
        shapes = sorted({"x".join(map(str, next(iter(f.values())).shape[:2])) for f in self.feeds})
        return {"source": self.source, "batches": len(self.feeds), "shapes": shapes}


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def _tokenizer_path(sidecar: dict[str, Any] | None, model_dir: Path | None) -> str | None:
    """The model's source folder, or the model's own folder (a decoder's runtime folder holds its tokenizer)."""
    source = ((sidecar or {}).get("source") or {}).get("path")
    candidates = ([Path(source)] if source else []) + ([model_dir] if model_dir else [])
    for folder in candidates:
        if folder.is_dir() and any((folder / f).is_file() for f in _TOKENIZER_FILES):
            return str(folder)
    return None


def _context_length(sidecar: dict[str, Any] | None) -> int | None:
    """A decoder's context length, which calibration stays within: the ort target's rotary tables (its
    GroupQueryAttention's cos/sin caches) hold that many rows and reject longer sequences."""
    return (((sidecar or {}).get("decoder") or {}).get("cache") or {}).get("max_positions")


def _first_step_of_decoder(feeds: dict[str, np.ndarray], specs: list[dict[str, Any]]) -> None:
    """Text gives input_ids and attention_mask; a decoder with a cache also takes position ids (counting
    real tokens) and its past, empty on this first step."""
    mask = feeds.get("attention_mask")
    batch, seq = feeds["input_ids"].shape
    for spec in specs:
        if spec["name"] in feeds:
            continue
        described = input_spec(spec)
        dtype = np.dtype(spec["dtype"])
        if described.kind == "position_ids" and mask is not None:
            feeds[spec["name"]] = positions(mask, seq).astype(dtype)
        elif "past_sequence_length" in described.dynamic_axes.values():
            feeds[spec["name"]] = np.zeros(resolved_shape(described, batch, seq, past=0), dtype)


def _from_text(path: Path, specs: list[dict[str, Any]], sidecar: dict[str, Any] | None,
               model_dir: Path | None) -> list[dict[str, np.ndarray]]:
    if not path.read_text(errors="replace").strip():  # said first: no tokenizer could make anything of it
        raise AttnoptError(f"{path} holds no text", "give one sentence a line")
    tokenizer_path = _tokenizer_path(sidecar, model_dir)
    if tokenizer_path is None:
        raise AttnoptError(f"{path}: a text file needs the model's tokenizer, and this model has none",
                           "calibrate with --calibration random or an .npz of inputs")
    names = {s["name"]: np.dtype(s["dtype"]) for s in specs}
    sets = []
    for encoded in tokenize_text(path, tokenizer_path, TEXT_BATCH, max_length=_context_length(sidecar)):
        feeds = {n: encoded[n].astype(t) for n, t in names.items() if n in encoded}
        if "input_ids" in feeds:
            _first_step_of_decoder(feeds, specs)
        missing = set(names) - set(feeds)
        if missing:
            raise AttnoptError(f"{path}: the tokenizer does not give the input(s) {sorted(missing)}",
                               "calibrate with an .npz that holds every input")
        sets.append(feeds)
    return sets


def _from_npz(path: Path) -> list[dict[str, np.ndarray]]:
    try:
        with np.load(path) as data:
            feeds = {k: data[k] for k in data.files}
    except Exception as exc:
        raise AttnoptError(f"{path}: not a readable .npz file") from exc
    return [feeds]


def validate(feeds: list[dict[str, np.ndarray]], specs: list[dict[str, Any]], source: str) -> None:
    """Names, dtypes (an integer input takes any integers) and ranks must match; no set may be empty."""
    if not feeds:
        raise AttnoptError(f"{source}: the calibration set is empty")
    want = {s["name"]: s for s in specs}
    for feed in feeds:
        missing, unknown = set(want) - set(feed), set(feed) - set(want)
        if missing or unknown:
            raise AttnoptError(f"{source}: calibration input names do not match the model (missing "
                               f"{sorted(missing)}, unknown {sorted(unknown)})", f"the model takes {sorted(want)}")
        for name, array in feed.items():
            spec, dtype = want[name], np.dtype(want[name]["dtype"])
            if array.ndim != len(spec["shape"]):
                raise AttnoptError(f"{source}: input {name} has rank {array.ndim}, the model takes rank "
                                   f"{len(spec['shape'])}")
            same_kind = np.issubdtype(array.dtype, np.integer) and np.issubdtype(dtype, np.integer)
            if array.dtype != dtype and not same_kind:
                raise AttnoptError(f"{source}: input {name} is {array.dtype}, the model takes {dtype}")
            if array.size == 0 and "past_sequence_length" not in spec["shape"]:  # an empty past is a first step
                raise AttnoptError(f"{source}: input {name} is empty")
            feed[name] = array.astype(dtype)


def default_source(sidecar: dict[str, Any] | None, model_dir: Path | None = None) -> str | Path:
    """DEFAULT_TEXT for a causal LM whose tokenizer is at hand, else 'random'."""
    return DEFAULT_TEXT if is_causal_lm(sidecar) and _tokenizer_path(sidecar, model_dir) else "random"


def calibration_inputs(source: str | Path | None, specs: list[dict[str, Any]], sidecar: dict[str, Any] | None,
                       seed: int = 0, model_dir: Path | None = None) -> Calibration:
    """`source`: 'random', a text file (.txt and anything not .npz), an .npz of inputs, or None for
    default_source's choice."""
    if source is None:
        source = default_source(sidecar, model_dir)
    if str(source) == "random":
        limit = _context_length(sidecar)
        feeds = [make_feeds(specs, batch, min(seq, limit) if limit else seq, seed + i)
                 for i, (batch, seq) in enumerate(RANDOM_SHAPES)]
        return Calibration("random", feeds)
    path = Path(source)
    if not path.is_file():
        raise AttnoptError(f"{path}: no such calibration file", "give a text file, an .npz, or 'random'")
    feeds = _from_npz(path) if path.suffix == ".npz" else _from_text(path, specs, sidecar, model_dir)
    validate(feeds, specs, str(path))
    return Calibration(str(path), feeds)


def activation_rows(model_path: Path, tensors: list[str], feeds: list[dict[str, np.ndarray]]
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration feed, each of `tensors` as rows (tokens) of its last axis, fp32, padding left out where the
    tensor is [batch, seq, channels] and the feed has an attention mask. The model runs from a copy of its graph
    (the tensors made outputs) written beside it without its weights, which it reads from the model's own external
    data: a model past protobuf's 2 GB runs as well."""
    import onnx

    from attnopt.runtime.onnxruntime import ort_module, session_options

    graph_model = onnx.load(str(model_path), load_external_data=False)
    existing = {o.name for o in graph_model.graph.output}
    for tensor in tensors:
        if tensor not in existing:
            graph_model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    tapped = model_path.parent / f".{model_path.stem}.tapped.onnx"
    onnx.save(graph_model, str(tapped))
    del graph_model
    try:
        session = ort_module().InferenceSession(str(tapped), session_options(optimize=False),
                                                providers=["CPUExecutionProvider"])
    finally:
        tapped.unlink(missing_ok=True)
    names = {i.name for i in session.get_inputs()}
    for feed in feeds:
        outputs = session.run(tensors, {k: v for k, v in feed.items() if k in names})
        mask = feed.get("attention_mask")
        rows = {}
        for tensor, x in zip(tensors, outputs):
            flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
            if mask is not None and x.ndim == 3 and mask.ndim == 2 and mask.shape[0] == x.shape[0] \
                    and mask.shape[1] >= x.shape[1]:
                flat = flat[mask[:, -x.shape[1]:].reshape(-1) > 0]
            rows[tensor] = flat
        yield rows
