"""`attnopt run`: export, optimize, build (where TensorRT and a GPU are), check and bench in one command,
into one folder with report.json and report.md. A stage whose inputs are unchanged (by content hash) is
skipped on a re-run; the first failing stage stops the run, leaving the earlier artifacts intact.

A causal LM runs as a decoder with a KV cache: each artifact is a runtime folder of its own inside the run's
folder (model/, model-ort/, model-ort-int4/: a genai_config.json names one model), parity is checked over
whole generations, and latency is timed at prefill and at decode on several past lengths."""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from attnopt.console import SILENT, Progress
from attnopt.digest import content_digest
from attnopt.errors import AttnoptError

DEFAULT_MODEL = "minilm"
STATE = ".attnopt-run.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8-weights")
#: bumped when the bench result's shape changes, so a cached result of another shape is timed again
BENCH_SCHEMA = "latency-4"  # 4: a decoder folder that shares its cache buffer is timed that way
DECODER_NO_ENGINE = "run builds no TensorRT engine for a decoder with a KV cache; it is timed on ONNX Runtime"


def _model_fingerprint(model: str) -> Any:
    """What the export depends on: attnopt's version, the spec, and the files behind it (a model folder,
    a factory's source file)."""
    from attnopt import __version__
    from attnopt.models.factory import is_factory_spec

    path = Path(model.rpartition(":")[0]) if is_factory_spec(model) else Path(model)
    return [__version__, model, path if path.exists() else None]


def model_task(model: str) -> str:
    """The task export infers, read without loading the model: a preset's own task, else causal-lm where the
    config names a `...ForCausalLM` (or `...LMHeadModel`), else the default."""
    from types import SimpleNamespace

    from attnopt.models import DEFAULT_TASK, PRESETS
    from attnopt.models.factory import is_factory_spec
    from attnopt.models.huggingface import cached_hub_folder, infer_task, looks_like_hub_id

    if is_factory_spec(model):
        return DEFAULT_TASK
    if model in PRESETS:
        return PRESETS[model].task or DEFAULT_TASK
    folder = Path(model).expanduser()
    if not folder.is_dir():
        if not looks_like_hub_id(model):
            return DEFAULT_TASK  # the export stage says what is wrong with the spec
        folder = Path(cached_hub_folder(model))
    try:
        names = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError):
        return DEFAULT_TASK
    return infer_task(SimpleNamespace(architectures=names))


@dataclass(frozen=True)
class Layout:
    """Where each artifact of a run goes."""

    export: Path
    fused: Path
    final: Path  # the quantized model, or the fused one at fp32
    engine: Path


def layout(folder: Path, target: str, precision: str, decoder: bool) -> Layout:
    if decoder:  # a folder of its own per decoder artifact: its genai_config.json names one model
        fused = folder / f"model-{target}" / "model.onnx"
        final = fused if precision == "fp32" else folder / f"model-{target}-{precision}" / "model.onnx"
        return Layout(folder / "model" / "model.onnx", fused, final, folder / "model.engine")
    fused = folder / f"model.{target}.onnx"
    final = fused if precision == "fp32" else folder / f"model.{target}.{precision}.onnx"
    return Layout(folder / "model.onnx", fused, final, folder / "model.engine")


@dataclass
class Stage:
    name: str
    status: str = "pending"  # done | cached | skipped | failed | pending
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass
class RunResult:
    out: Path
    stages: list[Stage]
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(s.status in ("done", "cached", "skipped") for s in self.stages)


def run(model: str = DEFAULT_MODEL, out: str | Path = "attnopt-out", *, task: str | None = None,
        target: str | None = None, precision: str = "fp32", calibration: str | Path | None = None,
        shapes: list[tuple[int, int]] | None = None, batches: list[int] | None = None, seqs: list[int] | None = None,
        pasts: list[int] | None = None, exporter: str = "dynamo", runs: int = 50, threads: int = 2,
        flush_denormals: bool = True, tensorrt_version: str | None = None, progress: Progress = SILENT) -> RunResult:
    """The whole job for `model` into `out`. The trt target (the default where TensorRT and a GPU are)
    lowers and builds for `tensorrt_version`'s operator table, by default the installed TensorRT's: the
    optimize stage converts the export's opset into its range, so nobody has to choose an opset.

    task None: inferred as export infers it. A causal LM exports with its KV cache, targets ort unless told
    otherwise, is checked over generations and benched at prefill (`seqs`: prompt lengths) and at decode on
    each past length of `pasts` (default 0, 128, 512 where its context holds them)."""
    import attnopt
    from attnopt.engine.environment import tensorrt_unavailable

    if precision not in PRECISIONS:
        raise AttnoptError(f"unsupported precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    if calibration is not None and str(calibration) != "random" and not Path(calibration).is_file():
        raise AttnoptError(f"{calibration}: no such calibration file", "give a text file, an .npz, or 'random'")
    task = task or model_task(model)
    decoder = task == "causal-lm"
    trt_reason = tensorrt_unavailable()
    target = target or ("trt" if not trt_reason and not decoder else "ort")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    paths = layout(folder, target, precision, decoder)
    stages: list[Stage] = []
    results: dict[str, Any] = {}

    @functools.cache
    def loaded() -> Any:
        """The decoder with its cache, loaded once for the stages that run (export, check, bench)."""
        from attnopt.models import load_model

        with progress.step(f"Loading {model}"):
            return load_model(model, task, cache=True)

    def stage(name: str, key: Any, outputs: list[Path], work: Callable[[], Any], skip: str = "") -> bool:
        record = Stage(name, outputs=[str(p) for p in outputs])
        stages.append(record)
        if skip:
            record.status, record.detail = "skipped", skip
            return True
        digest = content_digest(*key)
        if state.get(name, {}).get("digest") == digest and all(p.exists() for p in outputs):
            record.status = "cached"
            results[name] = state[name].get("result")
            return True
        start = time.perf_counter()
        try:
            with progress.step(f"Stage {name}"):
                results[name] = work()
        except AttnoptError as exc:
            record.status, record.detail = "failed", exc.one_line()
            state.pop(name, None)
            return False
        record.status, record.seconds = "done", time.perf_counter() - start
        state[name] = {"digest": digest, "result": results[name]}
        state_path.write_text(json.dumps(state, indent=2, default=str))
        return True

    def source() -> Any:
        return loaded() if decoder else model

    def check() -> dict[str, Any]:
        return _check(loaded() if decoder else model, artifacts, task, shapes, progress)

    export_key = [_model_fingerprint(model), task, exporter]
    ok = stage("export", export_key, [paths.export], lambda: _export(source(), paths.export, task, decoder, exporter,
                                                                        progress))
    ok = ok and stage("optimize", [paths.export, target, tensorrt_version], [paths.fused], lambda: attnopt.optimize(
        paths.export, paths.fused, target=target, force=True, tensorrt_version=tensorrt_version,
        progress=progress).report)
    if precision != "fp32":
        from attnopt.exporter.sidecar import read_sidecar
        from attnopt.passes.precision.calibration import default_source

        # what the quantize stage calibrates on, the default resolved (a text file is keyed by its contents)
        chosen = calibration if calibration is not None else default_source(read_sidecar(paths.fused), paths.fused.parent)
        calibration_key = "random" if str(chosen) == "random" else Path(chosen)
        ok = ok and stage("quantize", [paths.fused, precision, calibration_key], [paths.final], lambda: _quantize(
            paths.fused, paths.final, precision, calibration, progress))
    build_skip = trt_reason or (DECODER_NO_ENGINE if decoder else "")
    ok = ok and stage("build", [paths.final, tensorrt_version], [paths.engine],
                      lambda: _build(paths.final, paths.engine, tensorrt_version, progress), skip=build_skip)
    artifacts = list(dict.fromkeys([paths.export, paths.fused, paths.final]))
    artifacts += [paths.engine] if not build_skip else []
    ok = ok and stage("check", [_model_fingerprint(model), *artifacts, shapes], [], check)
    bench_key = [_model_fingerprint(model), *artifacts, batches, seqs, pasts, runs, threads, flush_denormals,
                 BENCH_SCHEMA]
    ok = ok and stage("bench", bench_key, [folder / "latency.png"], lambda: _bench(
        source(), artifacts, None if decoder else task, batches, seqs, pasts, runs, threads, flush_denormals,
        folder, progress))
    report = _report(folder, model, target, precision, decoder, stages, results)
    return RunResult(folder, stages, report)


def _export(model: Any, path: Path, task: str, decoder: bool, exporter: str, progress: Progress) -> dict[str, Any]:
    import attnopt

    # an encoder's graph is one forward; a decoder's takes its KV cache (a runtime folder: check runs it over
    # generations, bench times prefill and decode)
    result = attnopt.export(model, path, task=task, force=True, cache=decoder, exporter=exporter, progress=progress)
    if not result.ok:
        why = getattr(result.verification, "first_failure", "")
        raise AttnoptError(f"the export differs from PyTorch beyond tolerance{': ' + why if why else ''} "
                           f"(see {result.sidecar.name})")
    return result.to_dict()


def _quantize(fused: Path, out: Path, precision: str, calibration: Any, progress: Progress) -> dict[str, Any]:
    import attnopt

    result = attnopt.quantize(fused, out, precision=precision, calibration=calibration, force=True, progress=progress)
    if not result.passed:
        raise AttnoptError(f"the {precision} model misses its tolerance: {result.report['failure']}",
                           "loosen it with `attnopt quantize --cosine/--atol/--top1/--kl`, or calibrate on real inputs")
    return result.report


def _build(fused: Path, engine: Path, tensorrt_version: str | None, progress: Progress) -> dict[str, Any]:
    from attnopt.engine.build import build

    return build(fused, engine, force=True, tensorrt_version=tensorrt_version, progress=progress).record


def _check(model: Any, artifacts: list[Path], task: str, shapes: Any, progress: Progress) -> dict[str, Any]:
    """`attnopt check` on the run's artifacts. For a decoder (the model loaded with its cache) that is parity over
    generations: one case per step and one for the greedy tokens, and each artifact's generation parity whole
    under "generation" for the report (first failing step, first diverging token, cache error per layer)."""
    import attnopt

    result = attnopt.check(model, artifacts, task=task, shapes=shapes, progress=progress)
    if not result.passed:
        first = result.failures[0]
        if result.generation:
            raise AttnoptError(f"parity failed: {first.artifact} {first.inputs}: {first.metrics.reason}")
        raise AttnoptError(f"parity failed: {Path(first.artifact).name} inputs {first.inputs} output "
                           f"{first.metrics.name}: {first.metrics.reason}")
    return result.to_dict()


def _bench(model: Any, artifacts: list[Path], task: str | None, batches: Any, seqs: Any, pasts: Any, runs: int,
           threads: int, flush_denormals: bool, folder: Path, progress: Progress) -> dict[str, Any]:
    import attnopt
    from attnopt.latency import report

    result = attnopt.bench(model, artifacts, task=task, batches=batches or [1], seqs=seqs or [128], pasts=pasts,
                           runs=runs, threads=threads, flush_denormals=flush_denormals, progress=progress)
    report.plot(result, folder / "latency.png")
    return result.to_dict()


def latency_sentences(latency: dict[str, Any] | None) -> list[str]:
    """What the benchmark can say, one sentence a comparison (only what its confidence interval supports)."""
    from attnopt.latency.points import describe
    from attnopt.latency.report import sentence

    return [f"{describe(c)}: {sentence(c)}" for c in (latency or {}).get("comparisons", [])]


def _report(folder: Path, model: str, target: str, precision: str, decoder: bool, stages: list[Stage],
            results: dict[str, Any]) -> dict[str, Any]:
    content = {"model": model, "target": target, "precision": precision, "decoder": decoder,
               "stages": [vars(s) for s in stages], "coverage": (results.get("optimize") or {}).get("fusions"),
               "quantization": _precision_summary(results.get("quantize")),
               "parity": results.get("check"), "latency": results.get("bench")}
    (folder / "report.json").write_text(json.dumps(content, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(_markdown(content, folder))
    return content


def _precision_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    keys = ("precision", "method", "calibration", "tolerance", "nodes", "accuracy", "size", "kept", "notes")
    return {k: report[k] for k in keys if k in report}


def _shown(path: str, folder: Path) -> str:
    """An artifact as the run's folder holds it: model.ort.onnx, or model-ort/model.onnx for a decoder."""
    relative = os.path.relpath(path, folder)
    return Path(path).name if relative.startswith("..") else relative


def _markdown(content: dict[str, Any], folder: Path) -> str:
    from attnopt.parity.metrics import shown

    lines = [f"# attnopt run: {content['model']}", "", f"Target `{content['target']}`, precision "
             f"`{content['precision']}`" + (", a decoder with a KV cache." if content.get("decoder") else "."), "",
             "## Stages", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['detail']} |" for s in content["stages"]]
    if content["coverage"]:
        lines += ["", "## Fusion coverage", "", "| fusion | sites | fused | became |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['sites']} | {v['fused']} | {', '.join(f'{n} {f}' for f, n in v['forms'].items())} |"
                  for k, v in content["coverage"].items()]
    quant = content.get("quantization")
    if quant:
        acc, size = quant.get("accuracy") or {}, quant.get("size") or {}
        pooled = f"{acc['pooled_cosine']:.6f}" if "pooled_cosine" in acc else "-"
        top1 = f"{acc['top1']:.2%}" if "top1" in acc else "-"  # logits: what a language model is held to
        kl = f"{acc['kl']:.2g}" if "kl" in acc else "-"
        nodes = ", ".join(f"{n} {p}" for p, n in (quant.get("nodes") or {}).items())
        sizes = (f"{size['before_bytes'] / 1e6:.1f} -> {size['after_bytes'] / 1e6:.1f} MB"
                 if {"before_bytes", "after_bytes"} <= set(size) else "-")
        lines += ["", "## Precision", "", f"`{quant['precision']}` ({quant.get('method')}), calibrated on "
                  f"{(quant.get('calibration') or {}).get('source', '-')}; against fp32 on the calibration inputs:", "",
                  "| nodes | max abs | mean abs | token cosine | pooled cosine | next-token top-1 | KL | size |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {nodes} | {acc.get('max_abs', 0):.3g} | {acc.get('mean_abs', 0):.3g} | "
                  f"{acc.get('token_cosine', 0):.6f} | {pooled} | {top1} | {kl} | {sizes} |"]
        if quant.get("kept"):
            title = "Given zero points" if (quant.get("layers") or {}).get("zero_points") else \
                "Held at 8 bits" if quant.get("precision") == "int4" else "Kept in fp32"
            lines += ["", f"{title}:", ""] + [f"- `{k['node']}`: {k['reason']}" for k in quant["kept"]]
    if content["parity"]:
        lines += ["", "## Parity against PyTorch", ""]
        lines += _generation_markdown(content["parity"].get("generation") or {}, folder)
        lines += ["| artifact | inputs | output | max abs | cosine | result |", "|---|---|---|---|---|---|"]
        lines += [f"| {_shown(c['artifact'], folder)} | {c['inputs']} | {c['name']} | {shown(c['max_abs'], '.2e')} | "
                  f"{shown(c['cosine'], '.6f')} | {'pass' if c['passed'] else 'FAIL ' + c['reason']} |"
                  for c in content["parity"]["cases"]]
        lines += ["", "Parity ran ONNX Runtime with its exact numerics (denormals kept, ONNX Runtime's threads or "
                  "ATTNOPT_THREADS), "
                  "whatever the latency runs set."]
    if content["latency"]:
        lines += ["", *_latency_markdown(content["latency"])]
    return "\n".join(lines) + "\n"


def _generation_markdown(generations: dict[str, Any], folder: Path) -> list[str]:
    """Per decoder artifact: the steps compared, the first that failed, and the greedy tokens against Hugging
    Face `generate` (where they first diverge)."""
    lines = []
    for path, g in generations.items():
        steps = g.get("steps") or []
        worst = max((s["logits_max_abs"] for s in steps), default=0.0)
        cosines = [s["logits_cosine"] for s in steps if s.get("logits_cosine") is not None]
        kinds = ", ".join(dict.fromkeys(s["scenario"] for s in steps))
        verdict = "pass" if g["passed"] else "FAIL"
        text = (f"- `{_shown(path, folder)}` ({g['precision']}): {verdict}; {len(steps)} steps ({kinds}), "
                f"logits max abs error {worst:.2e}" + (f", lowest logits cosine {min(cosines):.6f}" if cosines else ""))
        if g.get("first_failure") and not g["passed"]:
            text += f"; first failure: {g['first_failure']}"
        tokens = g.get("tokens")
        if tokens:
            rows, count = len(tokens["expected"]), max((len(r) for r in tokens["expected"]), default=0)
            d = tokens["first_divergence"]
            text += (f"; greedy tokens identical to Hugging Face generate ({rows} prompts x {count} tokens)"
                     if tokens["identical"] else
                     f"; greedy tokens first differ from Hugging Face generate at prompt {d['row']} step "
                     f"{d['step']} (expected {d['expected']}, got {d['actual']})"
                     + ("" if g["precision"] == "fp32" else ", allowed below fp32"))
        lines.append(text + ".")
    return lines + ([""] if lines else [])


def _latency_markdown(latency: dict[str, Any]) -> list[str]:
    from attnopt.latency.points import KEYS, point_of
    from attnopt.latency.report import how_timed

    baseline, rows = latency["baseline"], latency["rows"]
    lines = ["## Latency", "", how_timed(latency), ""]
    decoder = any("phase" in r for r in rows)
    if decoder:
        lines += _decoder_summary(rows) + [""]
    lines += [f"- {s}" for s in latency_sentences(latency)]
    lines += [""] + [f"> warning: {w}" for w in latency["warnings"]] + ([""] if latency["warnings"] else [])
    ratio = {(c["backend"], point_of(c)): c for c in latency["comparisons"] if c["against"] == baseline}
    keys = [k for k in KEYS if rows and k in rows[0]]
    speed = ["tokens/s"] if decoder else []
    header = ["backend", *keys, "p50 ms", "p90 ms", *speed, "rounds", f"vs {baseline} (95% CI)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        c = ratio.get((r["backend"], point_of(r)))
        versus = f"{c['ratio']:.2f}x ({c['ci_low']:.2f}-{c['ci_high']:.2f}), {c['verdict']}" if c else "baseline"
        cells = [r["backend"], *(str(r[k]) for k in keys), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                 *([f"{r['tokens_per_s']:.0f}"] if decoder else []), str(r["rounds"]), versus]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "![latency](latency.png)"]


def _decoder_summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per backend: prefill ms, then decode ms per token at each past length, with tokens/s (medians)."""
    from attnopt.latency.points import DECODE, PREFILL
    from attnopt.latency.report import label

    lines = ["Median latency per backend: prefill (the prompt on an empty past) and decode (one new token on a "
             "past of that length):", ""]
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        parts = [f"prefill of {r['seq']} tokens {r['p50_ms']:.2f} ms ({r['tokens_per_s']:.0f} tokens/s)"
                 + (f" at batch {r['batch']}" if r["batch"] != 1 else "") for r in mine if r["phase"] == PREFILL]
        parts += [f"decode at past {r['past']} {r['p50_ms']:.2f} ms/token ({r['tokens_per_s']:.0f} tokens/s)"
                  + (f" at batch {r['batch']}" if r["batch"] != 1 else "") for r in mine if r["phase"] == DECODE]
        lines.append(f"- {label(backend)}: " + "; ".join(parts))
    return lines
