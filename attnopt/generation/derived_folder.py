"""An artifact made from a decoder (`optimize`, `quantize`) is a decoder folder of its own, loadable by
onnxruntime-genai as it is: the input folder's tokenizer and generation config beside it, and a
genai_config.json that matches the new graph (its file name, its input and output names, and whether past
and present share one buffer). genai_config.json names one model file, so a folder holds one decoder: an
output in a folder that already holds another decoder is refused before any work, with a folder to use."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from attnopt.artifacts import staged
from attnopt.console import Progress
from attnopt.errors import AttnoptError, OutputError
from attnopt.generation.artifact_folder import special_ids_of
from attnopt.generation.runtime_folder import (GENAI_CONFIG, INPUT_NAMES, OUTPUT_NAMES, layout_genai_config, named_model,
                                               read_genai_config)
from attnopt.generation.shared_cache import shares_cache_buffer
from attnopt.models.decoder import CacheLayout
from attnopt.models.tokenizer import TOKENIZER_FILES
from attnopt.passes.model_files import save_model

#: what a decoder folder holds beside its model when the input's sidecar does not list its runtime files
_RUNTIME_FILES = TOKENIZER_FILES + ("special_tokens_map.json", "merges.txt", "added_tokens.json",
                                    "chat_template.jinja", "generation_config.json")
#: genai_config keys that must name something in the graph; the others are left out when the graph lacks them
_REQUIRED = ("input_ids", "past_key_names", "past_value_names", "logits", "present_key_names", "present_value_names")


@dataclass
class RuntimeFiles:
    """What to write beside a decoder artifact: files copied from the input's folder, and its genai_config."""
    source_folder: Path
    copies: list[str]
    genai: dict[str, Any]
    #: the graph may read and write its cache in place; whether it does is proven on the saved file
    may_share: bool = False


def is_decoder(source: Path, sidecar: dict[str, Any] | None) -> bool:
    cache = ((sidecar or {}).get("decoder") or {}).get("cache")
    return bool(cache) or named_model(source.parent) == source.name


def own_folder(source: Path, output: Path) -> Path:
    """Where an artifact of `source` written as `output` gets a folder of its own: smol/model.int4.onnx ->
    smol-int4/model.onnx."""
    stem = output.name.removesuffix(".onnx")
    tag = stem.removeprefix(source.name.removesuffix(".onnx") + ".") or "artifact"
    return output.parent.parent / f"{output.parent.resolve().name}-{tag}" / "model.onnx"


def check_decoder_output(source: Path, sidecar: dict[str, Any] | None, output: Path) -> None:
    """Refuse, before any work, a decoder artifact in a folder whose genai_config.json names another model."""
    if not is_decoder(source, sidecar):
        return
    named = named_model(output.parent) if output.parent.is_dir() else None
    if named is not None and named != output.name:
        raise OutputError(f"{output.parent} already holds the decoder {named} (its {GENAI_CONFIG} names one model), "
                          f"so {output.name} would not be loadable there",
                          f"give the artifact a folder of its own (created if missing): -o {own_folder(source, output)}")


def _layout_config(source: Path, sidecar: dict[str, Any], model_file: str) -> dict[str, Any] | None:
    cache = ((sidecar or {}).get("decoder") or {}).get("cache")
    if not cache:
        return None
    eos_ids, pad_id = special_ids_of(source.parent)
    generation = source.parent / "generation_config.json"
    bos = json.loads(generation.read_text()).get("bos_token_id") if generation.is_file() else None
    return layout_genai_config(CacheLayout(**cache), "llama", bos, model_file, eos_ids, pad_id)


def _matched(names: dict[str, str], present: set[str], layers: int) -> dict[str, str]:
    """genai_config's names (key -> name, or pattern with %d per layer) that the graph holds."""
    matched = {}
    for key, name in names.items():
        wanted = [name % i for i in range(layers)] if "%d" in name else [name]
        missing = [w for w in wanted if w not in present]
        if not missing:
            matched[key] = name
        elif key in _REQUIRED:
            raise AttnoptError(f"the graph has no {missing[0]}, which onnxruntime-genai needs as its {key}",
                               "optimize or quantize the decoder as attnopt export wrote it")
    return matched


def _expand(names: dict[str, str], layers: int) -> set[str]:
    return {n % i if "%d" in n else n for n in names.values() for i in range(layers)}


def may_share_buffer(model: ir.Model) -> bool:
    """Only GroupQueryAttention reads and writes a cache in place; a graph without it concatenates."""
    nodes = ir.traversal.RecursiveGraphIterator(model.graph)
    return any(n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft" for n in nodes)


def plan_runtime_files(source: Path, sidecar: dict[str, Any] | None, model: ir.Model,
                       model_file: str) -> RuntimeFiles | None:
    """The runtime files for `model` (to be written as `model_file`) made from the decoder `source`; None when
    `source` is not a decoder. Raises when the new graph is not one onnxruntime-genai can run."""
    if not is_decoder(source, sidecar):
        return None
    folder = source.parent
    if named_model(folder) == source.name:
        content = read_genai_config(folder)
    else:
        content = _layout_config(source, sidecar or {}, model_file)
    if content is None:
        return None
    decoder = content["model"]["decoder"]
    layers = int(decoder["num_hidden_layers"])
    inputs = {v.name for v in model.graph.inputs}
    outputs = {v.name for v in model.graph.outputs}
    decoder["inputs"] = _matched({**INPUT_NAMES, **decoder.get("inputs", {})}, inputs, layers)
    decoder["outputs"] = _matched({**OUTPUT_NAMES, **decoder.get("outputs", {})}, outputs, layers)
    unfed = sorted(inputs - _expand(decoder["inputs"], layers))
    if unfed:
        raise AttnoptError(f"graph input {unfed[0]} is not one onnxruntime-genai feeds",
                           "optimize or quantize the decoder as attnopt export wrote it")
    decoder["filename"] = model_file
    # settled by running the saved graph both ways (save_artifact); false until then
    content.setdefault("search", {})["past_present_share_buffer"] = False
    listed = ((sidecar or {}).get("decoder") or {}).get("runtime_files") or _RUNTIME_FILES
    copies = sorted(name for name in listed if name != GENAI_CONFIG and (folder / name).is_file())
    return RuntimeFiles(folder, copies, content, may_share_buffer(model))


def save_artifact(model: ir.Model, path: Path, sidecar: dict[str, Any], runtime: RuntimeFiles | None,
                  progress: Progress) -> list[str]:
    """`model` to `path` with its sidecar and, for a decoder, its runtime files: all of them or none.
    Returns the runtime files' names."""
    if runtime is None:
        save_model(model, path, sidecar, progress)
        return []
    names = sorted({*runtime.copies, GENAI_CONFIG})
    decoder = {**(sidecar.get("decoder") or {}), "runtime_files": names}
    with staged(path) as stage:
        for name in runtime.copies:
            shutil.copy2(runtime.source_folder / name, stage / name)
        save_model(model, stage / path.name, {**sidecar, "decoder": decoder}, progress)
        if runtime.may_share and decoder.get("cache"):
            with progress.step("whether past and present can share one buffer"):
                runtime.genai["search"]["past_present_share_buffer"] = shares_cache_buffer(
                    stage / path.name, CacheLayout(**decoder["cache"]))
        (stage / GENAI_CONFIG).write_text(json.dumps(runtime.genai, indent=2) + "\n")
    return names

