"""`attnopt quantize`: fp16/bf16 (explicit Casts, tolerance-driven fp32 fallback), int8 (dynamic, or
calibrated Q/DQ; accuracy-aware) or weight-only int4 / int8-weights (MatMulNBits; accuracy-aware at 8 bits
or fp32), measured against the fp32 model on the calibration inputs; writes the model, its sidecar
(precision recorded for `attnopt check`) and a report."""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from attnopt.artifacts import check_output
from attnopt.console import SILENT, Progress
from attnopt.errors import AttnoptError
from attnopt.exporter import check_output_folder_parent, created_folder
from attnopt.exporter.sidecar import is_causal_lm, read_sidecar
from attnopt.models.decoder import CacheLayout
from attnopt.generation.derived_folder import check_decoder_output, plan_runtime_files, save_artifact
from attnopt.parity.artifacts import precision_of
from attnopt.parity.padding import at_last_positions
from attnopt.parity.tolerance import Tolerance, default_tolerance
from attnopt.passes.feeds import model_inputs
from attnopt.passes.graph_utils import ensure_node_names, initializer_bytes
from attnopt.passes.last_logits import keep_last_logits, restore_all_logits
from attnopt.passes.model_files import load_onnx, save_report
from attnopt.passes.precision import int8, weight_only, weight_search
from attnopt.passes.precision.accuracy import Accuracy, Reference, measure
from attnopt.passes.precision.calibration import Calibration, calibration_inputs
from attnopt.passes.precision.cast import emulated, nodes_by_precision
from attnopt.passes.precision.equalize import equalize_inputs
from attnopt.passes.precision.mixed import search
from attnopt.passes.precision.placement import check_placement
from attnopt.passes.precision.int8 import Layer
from attnopt.passes.precision.sensitivity import select
from attnopt.passes.verify import run_model

PRECISIONS = ("fp16", "bf16", "int8", "int4", "int8-weights")


@dataclass
class QuantizeResult:
    path: Path | None  # None when the model missed the tolerance and was not written
    report: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


def _criteria(precision: str, overrides: dict[str, float | None] | None, sidecar: dict[str, Any] | None) -> Tolerance:
    return default_tolerance(precision, is_causal_lm(sidecar)).merged({k: v for k, v in (overrides or {}).items()
                                                                        if v is not None})


def _cache_io(sidecar: dict[str, Any] | None, precision: str, keep_io_types: bool, fp32_cache: bool) -> list[str]:
    """A decoder's past and present names, which fp16 puts in fp16 at the graph's edges too, as its cache is
    inside (half the memory, no Cast per layer and step), unless `fp32_cache`; bf16's stay fp32 (numpy, and so
    attnopt's loop, has no bf16)."""
    cache = ((sidecar or {}).get("decoder") or {}).get("cache")
    if not cache or precision != "fp16" or not keep_io_types or fp32_cache:
        return []
    layout = CacheLayout(**cache)
    return layout.past_names() + layout.present_names()


def _reduced(model: ir.Model, precision: str, calibration: Calibration, criteria: Tolerance,
             reference: list[dict[str, np.ndarray]], target: str | None, keep_io_types: bool,
             cache_io: list[str], progress: Progress) -> tuple[ir.Model, dict[str, Any]]:
    notes = []
    if cache_io:
        notes.append(f"the KV cache ({len(cache_io) // 2} inputs and as many outputs) is {precision} at the graph's "
                     f"edges as inside: half its memory, no Cast per layer and step (--fp32-cache keeps it fp32)")
    evaluate = None
    if precision == "bf16":  # ONNX Runtime's CPU provider has no bf16 kernels: measure a faithful emulation
        evaluate = lambda m: run_model(emulated(m), calibration.feeds)  # noqa: E731
        notes.append("bf16 accuracy measured on an fp32 emulation that rounds every bf16 value and weight "
                     "(ONNX Runtime's CPU provider has no bf16 kernels)")
    reduced_softmax = target == "trt"
    if reduced_softmax:
        notes.append("Softmax left in reduced precision: TensorRT accumulates it in fp32, and Casts would split "
                     "the MatMul-Softmax-MatMul pattern its attention fusion needs")
    result = search(model, precision, calibration.feeds, criteria, reference, reduced_softmax, keep_io_types,
                    evaluate, progress, cache_io)
    conversion = result.conversion.to_dict()
    details = {"accuracy": result.accuracy.to_dict(), "passed": result.passed, "failure": result.failure,
               "kept": conversion["kept"], "clamped": conversion["clamped"], "casts": conversion["casts"],
               "search": result.steps, "notes": notes}
    return result.model, details


def _trial(build: Callable[[list[str]], Path], reference: list[dict[str, np.ndarray]],
           calibration: Calibration) -> Callable[[list[str]], Accuracy]:
    """A sensitivity trial: the model with those layers quantized, built, measured against fp32 on the
    calibration inputs, then deleted (a trial model is as large as the model: never keep dozens)."""
    def trial(names: list[str]) -> Accuracy:
        path = build(names)
        try:
            return measure(reference, run_model(path, calibration.feeds), calibration.feeds)
        finally:
            path.unlink()
    return trial


def _int8(model: ir.Model, method: str, calibration: Calibration, calibration_method: str, criteria: Tolerance,
          reference: list[dict[str, np.ndarray]], specs: list[dict[str, Any]], accuracy_aware: bool,
          per_channel: bool, workdir: Path, progress: Progress) -> tuple[ir.Model, dict[str, Any]]:
    prepared = model.clone()
    excluded, notes = int8.prepare_dynamic(prepared, specs) if method == "dynamic" else ({}, [])
    prepared_path = workdir / "prepared.onnx"
    ir.save(prepared, prepared_path, external_data=prepared_path.name + ".data")
    candidates = [layer for layer in int8.layers(prepared, method) if layer.name not in excluded]
    if not candidates:
        raise AttnoptError("the model has no layer int8 applies to (MatMul/Gemm with constant weights)")
    cache = workdir / "calibration.json"
    counter = itertools.count()
    dynamic = int8.DynamicQuantizer(prepared_path) if method == "dynamic" else None

    def quantized(nodes: list[str]) -> Path:
        out = workdir / f"trial{next(counter)}.onnx"
        if dynamic is not None:
            dynamic.quantize(out, nodes, per_channel)
        else:
            int8.quantize_static(prepared_path, out, nodes, calibration.feeds, calibration_method, cache)
        return out

    selection = select(candidates, _trial(quantized, reference, calibration), criteria, accuracy_aware, progress)
    final = ir.load(quantized(selection.quantized)) if selection.quantized else prepared
    kind = {layer.name: layer for layer in candidates}
    kept = [{"node": name, "reason": reason} for name, reason in sorted(excluded.items())]
    alone = {s["node"]: s["error_alone"] for s in selection.sensitivity}
    kept += [{"node": layer.name, "op": layer.op,
              "reason": f"among the most sensitive layers (alone: 1 - cosine = {alone[layer.name]:.2e})"}
             for layer in selection.kept]
    details = {"accuracy": selection.accuracy.to_dict(), "passed": selection.passed, "failure": selection.failure,
               "kept": kept, "sensitivity": selection.sensitivity, "notes": notes,
               "layers": {"candidates": len(candidates), "quantized": len(selection.quantized),
                          "kinds": {k: sum(1 for n in selection.quantized if kind[n].kind == k)
                                    for k in sorted({layer.kind for layer in candidates})}}}
    if method == "static":
        details["placement"] = check_placement(final)
    return final, details


def _weights(model: ir.Model, precision: str, calibration: Calibration, criteria: Tolerance,
             reference: list[dict[str, np.ndarray]], accuracy_aware: bool, options: WeightOptions, workdir: Path,
             progress: Progress) -> tuple[ir.Model, dict[str, Any]]:
    """Weight-only: every weight MatMul at the precision's bits; when that misses the tolerance, the most
    sensitive groups of layers (contiguous in graph order) get a zero point per block (int4's default, symmetric
    elsewhere) or fall back to 8 bits (int4) or fp32 (int8-weights)."""
    tied = weight_only.materialize_transposed_weights(model)
    layers = weight_only.weight_layers(model)
    if not layers:
        raise AttnoptError("the model has no MatMul with a constant weight: weight-only quantization has nothing to do")
    weight_only.check_block_size(model, layers, options.block_size)
    prepared = workdir / "prepared.onnx"
    ir.save(model, prepared, external_data=prepared.name + ".data")
    bits, fallback = weight_only.BITS[precision], (8 if precision == "int4" else None)
    scaled: list[dict[str, Any]] = []
    if options.equalize:
        # a tied LM head keeps its weights: the embedding reads the same table
        with progress.step(f"Scaling activations and weights where exact (activation-aware, {bits}-bit blocks)"):
            scaled = equalize_inputs(model, prepared, {layer.name for layer in layers} - set(tied),
                                     calibration.feeds, bits, options.block_size, options.symmetric,
                                     options.accuracy_level == 4)
        if any(site["alpha"] > 0 for site in scaled):
            prepared = workdir / "equalized.onnx"
            ir.save(model, prepared, external_data=prepared.name + ".data")
    groups = weight_only.layer_groups(layers)
    heads = {name for name, nodes in groups.items()
             if any(layer.kind == "lm_head" and layer.name in nodes for layer in layers)}
    # int4's LM head at lm_head_bits 8 is pinned there, whatever the tolerance; at 4 it is the first group held
    # at 8 bits when the tolerance is missed (held_first)
    pinned = {name for name in heads if options.lm_head_bits > bits}
    counter = itertools.count()
    importance = None
    if options.algorithm in ("mse", "gptq") and bits == 4:
        with progress.step(f"Measuring the input channels of {len(layers)} weight MatMuls on "
                           f"{len(calibration.feeds)} calibration batches"):
            importance = weight_search.input_importance(prepared, [layer.name for layer in layers],
                                                        calibration.feeds, options.algorithm == "gptq")
    memo: dict = {}  # the parsed source and each node's quantized form (MatMulNBits, searched blocks), for every trial
    shared: list[str] = []  # the embedding tables the last build read from their quantized LM head

    def build(build_options: weight_only.WeightOptions, quantized_groups: list[str],
              zero_point_groups: Sequence[str] = ()) -> Path:
        plan = {node: fallback for group in groups.values() for node in group} if fallback else {}
        plan.update({node: build_options.lm_head_bits for name in pinned for node in groups[name]})
        plan.update({node: bits for name in quantized_groups for node in groups[name]})
        zero_points = frozenset(node for name in zero_point_groups for node in groups[name])
        out = workdir / f"trial{next(counter)}.onnx"
        shared[:] = weight_only.quantize_weights(prepared, out, plan, build_options, importance, memo, tied,
                                                 zero_points)
        return out

    group_layers = [Layer(name, "MatMul", "lm_head" if name in heads else "linear")
                    for name in groups if name not in pinned]
    first = frozenset(heads - pinned if fallback else ())
    every = [group.name for group in group_layers]

    def with_zero_points(symmetric_groups: list[str]) -> Path:
        return build(options, every, [name for name in every if name not in symmetric_groups])

    zero_pointed, restarted = None, []
    if options.zero_points_where_needed:
        # the cheaper remedy first: symmetric groups that miss the tolerance get zero points, still at 4 bits
        selection = select(group_layers, _trial(with_zero_points, reference, calibration), criteria, True,
                           progress, held_is_exact=False, held_first=first)
        if selection.passed:
            zero_pointed, final_path = selection.kept, with_zero_points(selection.quantized)
        else:  # even every group with zero points misses: zero points everywhere, then 8 bits where needed
            options = replace(options, symmetric=False, zero_points_where_needed=False)
            restarted = ["symmetric blocks with zero points where needed missed the tolerance even with every "
                         "group zero-pointed: searched again from zero points everywhere, groups held at 8 bits"]
    if zero_pointed is None:
        selection = select(group_layers, _trial(lambda names: build(options, names), reference, calibration),
                           criteria, accuracy_aware, progress, held_is_exact=fallback is None, held_first=first)
        final_path = build(options, selection.quantized)
    final = ir.load(final_path)
    held = "8 bits" if fallback else "fp32"
    remedy = "given a zero point per block" if zero_pointed is not None else f"held at {held}"
    measured = "left symmetric, the others zero-pointed," if zero_pointed is not None else "quantized"
    kept = [{"node": name, "op": "MatMul", "reason": f"the LM head, held at {options.lm_head_bits} bits for "
             f"{precision} (lm_head_bits; 4 quantizes it with the rest)"} for name in sorted(pinned)]
    kept += [{"node": group.name, "op": group.op, "reason": f"the LM head, the first group {remedy} when "
              f"the tolerance is missed (at 4 bits it moves the next token most)" if group.name in heads else
              f"among the most sensitive layers, {remedy} (alone: {group.name} {measured} costs 1 - cosine = "
              f"{next(s['error_alone'] for s in selection.sensitivity if s['node'] == group.name):.2e})"}
             for group in selection.kept]
    # zero-pointed groups stay at 4 bits: only groups held at 8 bits (or fp32) are not quantized
    four_bit = every if zero_pointed is not None else selection.quantized
    details = {"accuracy": selection.accuracy.to_dict(), "passed": selection.passed, "failure": selection.failure,
               "kept": kept, "sensitivity": selection.sensitivity, "weights": options.to_dict(),
               "notes": [f"{len(layers)} weight MatMuls in {len(groups)} groups; groups that miss the tolerance "
                         + ("get a zero point per block (symmetric blocks elsewhere)" if zero_pointed is not None
                            else f"fall back to {held}")] + restarted
               + ([f"{len(tied)} MatMul(s) are a tied LM head (the embedding table, transposed): quantized as "
                   f"weights like the others"] if tied else [])
               + [f"the embedding {table} reads quantized blocks (GatherBlockQuantized; the LM head's own, or "
                  f"8-bit round-to-nearest ones where gptq/mse/hqq fitted the head's): the fp32 table is gone"
                  for table in shared]
               + _scaling_notes(scaled),
               "equalized": scaled,
               "layers": {"candidates": len(layers), "quantized": sum(len(groups[g]) for g in four_bit),
                          "zero_points": sum(len(groups[g.name]) for g in zero_pointed or []), "bits": bits}}
    return final, details


def _scaling_notes(scaled: list[dict[str, Any]]) -> list[str]:
    if not scaled:
        return []
    before, after = np.mean([s["error_unscaled"] for s in scaled]), np.mean([s["error"] for s in scaled])
    return [f"activation-aware scaling: {sum(s['alpha'] > 0 for s in scaled)} of {len(scaled)} sites scaled, the "
            f"quantized products' mean relative error on the calibration activations {before:.2e} -> {after:.2e}"]


def quantize(model: str | Path, output: str | Path, *, precision: str = "int8", method: str | None = None,
             calibration: str | Path | None = None, calibration_method: str = "minmax",
             tolerance: dict[str, float | None] | None = None, accuracy_aware: bool = True,
             keep_io_types: bool = True, per_channel: bool = True, keep_failed: bool = False,
             report: str | Path | None = None, force: bool = False, seed: int = 0,
             block_size: int = 32, symmetric: bool | None = None,
             accuracy_level: int = weight_only.CPU_ACCURACY_LEVEL, progress: Progress = SILENT,
             lm_head_bits: int = 4, shared_embedding: bool = True, fp32_cache: bool = False,
             equalize: bool | None = None) -> QuantizeResult:
    """Convert an fp32 ONNX model to `precision` (fp16, bf16, int8, int4 or int8-weights) within `tolerance`
    (defaults by precision, a causal LM's fp16/bf16 by its logits' top-1, KL and cosine; keys atol/cosine/top1/kl)
    against the fp32 model on the calibration inputs ('random', a text file for the model's tokenizer, or an .npz;
    by default attnopt's English sentences for a causal LM with its tokenizer, else random). int8 `method`: dynamic (ONNX Runtime CPU) or
    static (Q/DQ, TensorRT); by default static for models optimized for trt, else dynamic. int4 and
    int8-weights (weight-only, MatMulNBits) `method`: int4 gptq (default: rounding errors compensated through the
    calibration activations' second moment), mse (scales and integer zero points searched per block, weighted
    by the calibration activations), rtn (int8-weights' default) or hqq, in blocks of
    `block_size`, `symmetric` or not for every layer (None: int4 symmetric, and where that misses the tolerance
    the most sensitive groups get a zero point per block before any is held at 8 bits; int8-weights symmetric;
    hqq is asymmetric whatever is asked); int4 puts the LM head at `lm_head_bits` (4 by default, with the rest,
    and the first group given zero points, then held at 8 bits, when the tolerance is missed; 8 pins it there); with `shared_embedding`
    (default) a tied embedding reads quantized blocks instead of its fp32 table (the LM head's own, or 8-bit
    round-to-nearest ones where the head's codes were fitted to its inputs). `equalize` (None: for rtn)
    divides the input channels of weight MatMuls by an activation-aware factor where that is free (norms, gated
    products) and multiplies their weight rows by it before rounding (exact in fp32; see
    passes/precision/equalize). A decoder's fp16 keeps its KV cache in fp16 at the graph's edges too, unless
    `fp32_cache` (`keep_io_types` keeps the others fp32). A decoder's result is a folder onnxruntime-genai loads
    as it is (see `optimize`)."""
    start = time.perf_counter()
    source, path = Path(model), Path(output)
    if precision not in PRECISIONS:
        raise AttnoptError(f"unsupported precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    methods = weight_only.ALGORITHMS if precision in weight_only.BITS else int8.METHODS
    if method is not None and method not in methods:
        raise AttnoptError(f"unknown {precision} method {method!r}", f"choose one of: {', '.join(methods)}")
    if method in weight_only.SEARCHED and precision != "int4":
        raise AttnoptError(f"{method} quantizes to 4 bits only", f"use --precision int4 with {method}, or --method rtn")
    if calibration_method not in int8.CALIBRATION_METHODS:
        raise AttnoptError(f"unknown calibration method {calibration_method!r}",
                           f"choose one of: {', '.join(int8.CALIBRATION_METHODS)}")
    if lm_head_bits not in weight_only.LM_HEAD_BITS:
        raise AttnoptError(f"LM head bits {lm_head_bits} are not supported",
                           f"choose one of: {', '.join(map(str, weight_only.LM_HEAD_BITS))}")
    check_output_folder_parent(path)
    if path.parent.is_dir():
        check_output(path, force, inputs=(source,))
    sidecar = read_sidecar(source)
    check_decoder_output(source, sidecar, path)
    created = not path.parent.exists()
    with created_folder(path.parent):
        check_output(path, force, inputs=(source,))
        result = _quantize_into(source, path, sidecar, precision, method, calibration, calibration_method, tolerance,
                                accuracy_aware, keep_io_types, per_channel, keep_failed, report, seed, block_size,
                                symmetric, accuracy_level, lm_head_bits, shared_embedding, fp32_cache, equalize,
                                progress, start)
    if created and result.path is None and path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()  # nothing written: the folder made for it goes too
    return result


def _last_logits_again(model: ir.Model, feed: dict[str, np.ndarray]) -> str:
    """The LM head of the measured model made to read each row's last token again, as the input did, checked on
    one calibration batch against the measured model's logits at those tokens; the report's word for it."""
    before = run_model(model, [feed])[0]["logits"]
    left = keep_last_logits(model)
    if left:
        return f"every position ({left})"
    after = run_model(model, [feed])[0]["logits"]
    expected = at_last_positions("logits", before, after, feed)
    if after.shape != expected.shape or not np.allclose(after, expected, rtol=1e-4, atol=1e-4):
        restore_all_logits(model)
        return "every position (reading the last token only changed the logits)"
    return "last position"


def _quantize_into(source: Path, path: Path, sidecar: dict[str, Any] | None, precision: str, method: str | None,
                   calibration: str | Path | None, calibration_method: str,
                   tolerance: dict[str, float | None] | None, accuracy_aware: bool, keep_io_types: bool,
                   per_channel: bool, keep_failed: bool, report: str | Path | None, seed: int, block_size: int,
                   symmetric: bool | None, accuracy_level: int, lm_head_bits: int, shared_embedding: bool,
                   fp32_cache: bool, equalize: bool | None, progress: Progress, start: float) -> QuantizeResult:
    if report is not None:
        check_output(Path(report), force=True, inputs=(source, path))
    criteria = _criteria(precision, tolerance, sidecar)
    with progress.step(f"Loading {source}"):
        ir_model = load_onnx(source)
    ensure_node_names(ir_model.graph)
    # quality is measured at every position (teacher forcing); the written model reads the last one again
    last_only = restore_all_logits(ir_model)
    logits_out = next((v for v in ir_model.graph.outputs if v.name == "logits"), None)
    if not last_only and logits_out is not None and logits_out.shape is not None and len(logits_out.shape) == 3 \
            and logits_out.shape[1] == 1:
        raise AttnoptError(f"{source} computes the last position's logits only, in a form attnopt cannot restore; "
                           "quantization measures every position", "quantize the export or attnopt's optimize output")
    # weights held in Constant nodes would be quantized as activations: make them initializers
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
    current = precision_of(ir_model, sidecar)
    if current != "fp32":
        raise AttnoptError(f"{source} is already {current}", "quantize the fp32 model (export or optimize output)")
    specs = model_inputs(ir_model, sidecar)
    calib = calibration_inputs(calibration, specs, sidecar, seed, model_dir=source.parent)
    target = ((sidecar or {}).get("optimization") or {}).get("target")
    with progress.step(f"Running the fp32 model on {len(calib.feeds)} calibration batches"):
        reference = Reference(run_model(ir_model, calib.feeds), calib.feeds)
    size_before = initializer_bytes(ir_model)
    with tempfile.TemporaryDirectory(prefix="attnopt-quantize-") as tmp:
        if precision in weight_only.BITS:
            method = method or (weight_only.INT4_ALGORITHM if precision == "int4" else "rtn")
            where_needed = symmetric is None and precision == "int4" and accuracy_aware and \
                weight_only.INT4_ZERO_POINTS_WHERE_NEEDED
            if symmetric is None:
                symmetric = True
            if equalize is None:
                equalize = method in weight_only.EQUALIZE_METHODS
            # HQQ's optimised scales come with a zero point per block: asymmetric whatever was asked
            options = weight_only.WeightOptions(block_size, symmetric and method != "hqq", method, accuracy_level,
                                                lm_head_bits if precision == "int4" else 8, shared_embedding,
                                                equalize, where_needed and method != "hqq")
            result, details = _weights(ir_model, precision, calib, criteria, reference, accuracy_aware, options,
                                       Path(tmp), progress)
        elif precision == "int8":
            method = method or ("static" if target == "trt" else "dynamic")
            result, details = _int8(ir_model, method, calib, calibration_method, criteria, reference, specs,
                                    accuracy_aware, per_channel, Path(tmp), progress)
        else:
            method = "cast"
            result, details = _reduced(ir_model, precision, calib, criteria, reference, target, keep_io_types,
                                       _cache_io(sidecar, precision, keep_io_types, fp32_cache), progress)
        logits = _last_logits_again(result, calib.feeds[0]) if last_only else "every position"
        size_after = initializer_bytes(result)
        content = {
            "format": "attnopt.quantize/1", "source": str(source), "precision": precision, "method": method,
            "calibration": {**calib.describe(), **({"method": calibration_method}
                                                   if precision == "int8" and method == "static" else {})},
            "tolerance": criteria.to_dict(), "nodes": nodes_by_precision(result), "logits": logits,
            "size": {"before_bytes": size_before, "after_bytes": size_after,
                     "ratio": round(size_after / max(size_before, 1), 4)},
            **details,
        }
        written = None
        if content["passed"] or keep_failed:
            written = path
            runtime = plan_runtime_files(source, sidecar, result, path.name)
            content["runtime_files"] = save_artifact(
                result, path, {**(sidecar or {}), "precision": precision, "quantization": content}, runtime, progress)
    content["seconds"] = round(time.perf_counter() - start, 2)
    if report is not None:
        save_report(Path(report), content)
    return QuantizeResult(written, content, content["seconds"])
