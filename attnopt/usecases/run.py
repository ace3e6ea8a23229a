"""`attnopt run`: export, optimize, build (where TensorRT and a GPU are), check and bench in one command,
into one folder with report.json and report.md. A stage whose inputs are unchanged (by content hash) is
skipped on a re-run; the first failing stage stops the run, leaving the earlier artifacts intact."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from attnopt.console import SILENT, Progress
from attnopt.digest import content_digest
from attnopt.errors import AttnoptError

DEFAULT_MODEL = "minilm"
STATE = ".attnopt-run.json"
PRECISIONS = ("fp32", "fp16", "int8")
#: bumped when the bench result's shape changes, so a cached result of another shape is timed again
BENCH_SCHEMA = "latency-2"


def _model_fingerprint(model: str) -> Any:
    """What the export depends on: attnopt's version, the spec, and the files behind it (a model folder,
    a factory's source file)."""
    from attnopt import __version__
    from attnopt.models.factory import is_factory_spec

    path = Path(model.rpartition(":")[0]) if is_factory_spec(model) else Path(model)
    return [__version__, model, path if path.exists() else None]


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


def run(model: str = DEFAULT_MODEL, out: str | Path = "attnopt-out", *, task: str = "feature-extraction",
        target: str | None = None, precision: str = "fp32", calibration: str | Path | None = None,
        shapes: list[tuple[int, int]] | None = None, batches: list[int] | None = None, seqs: list[int] | None = None,
        flush_denormals: bool = True, tensorrt_version: str | None = None, progress: Progress = SILENT) -> RunResult:
    """The whole job for `model` into `out`. The trt target (the default where TensorRT and a GPU are)
    lowers and builds for `tensorrt_version`'s operator table, by default the installed TensorRT's: the
    optimize stage converts the export's opset into its range, so nobody has to choose an opset."""
    import attnopt
    from attnopt.engine.environment import tensorrt_unavailable

    if precision not in PRECISIONS:
        raise AttnoptError(f"unsupported precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    if calibration is not None and str(calibration) != "random" and not Path(calibration).is_file():
        raise AttnoptError(f"{calibration}: no such calibration file", "give a text file, an .npz, or 'random'")
    trt_reason = tensorrt_unavailable()
    target = target or ("trt" if not trt_reason else "ort")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    onnx_path, fused = folder / "model.onnx", folder / f"model.{target}.onnx"
    engine = folder / "model.engine"
    stages: list[Stage] = []
    results: dict[str, Any] = {}

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

    ok = stage("export", [_model_fingerprint(model), task], [onnx_path], lambda: _export(model, onnx_path, task, progress))
    ok = ok and stage("optimize", [onnx_path, target, tensorrt_version], [fused], lambda: attnopt.optimize(
        onnx_path, fused, target=target, force=True, tensorrt_version=tensorrt_version, progress=progress).report)
    final = fused
    if precision != "fp32":
        final = folder / f"model.{target}.{precision}.onnx"
        calibration_key = Path(calibration) if calibration and str(calibration) != "random" else "random"
        ok = ok and stage("quantize", [fused, precision, calibration_key], [final], lambda: _quantize(
            fused, final, precision, calibration, progress))
    ok = ok and stage("build", [final, tensorrt_version], [engine],
                      lambda: _build(final, engine, tensorrt_version, progress), skip=trt_reason)
    artifacts = [onnx_path, fused] + ([final] if final != fused else []) + ([engine] if not trt_reason else [])
    ok = ok and stage("check", [_model_fingerprint(model), *artifacts, shapes], [], lambda: _check(
        model, artifacts, task, shapes, progress))
    bench_key = [_model_fingerprint(model), *artifacts, batches, seqs, flush_denormals, BENCH_SCHEMA]
    ok = ok and stage("bench", bench_key, [folder / "latency.png"],
                      lambda: _bench(model, artifacts, task, batches, seqs, flush_denormals, folder, progress))
    report = _report(folder, model, target, precision, stages, results)
    return RunResult(folder, stages, report)


def _export(model: str, path: Path, task: str, progress: Progress) -> dict[str, Any]:
    import attnopt

    # without a KV cache: check and bench below time one forward (prefill and decode stages are to come)
    result = attnopt.export(model, path, task=task, force=True, cache=False, progress=progress)
    if not result.ok:
        raise AttnoptError(f"the export differs from PyTorch beyond tolerance (see {result.sidecar.name})")
    return result.to_dict()


def _quantize(fused: Path, out: Path, precision: str, calibration: Any, progress: Progress) -> dict[str, Any]:
    import attnopt

    result = attnopt.quantize(fused, out, precision=precision, calibration=calibration, force=True, progress=progress)
    if not result.passed:
        raise AttnoptError(f"the {precision} model misses its tolerance: {result.report['failure']}",
                           "loosen it with `attnopt quantize --cosine/--atol`, or calibrate on real inputs")
    return result.report


def _build(fused: Path, engine: Path, tensorrt_version: str | None, progress: Progress) -> dict[str, Any]:
    from attnopt.engine.build import build

    return build(fused, engine, force=True, tensorrt_version=tensorrt_version, progress=progress).record


def _check(model: str, artifacts: list[Path], task: str, shapes: Any, progress: Progress) -> dict[str, Any]:
    import attnopt

    result = attnopt.check(model, artifacts, task=task, shapes=shapes, progress=progress)
    if not result.passed:
        first = result.failures[0]
        raise AttnoptError(f"parity failed: {Path(first.artifact).name} inputs {first.inputs} output "
                           f"{first.metrics.name}: {first.metrics.reason}")
    return result.to_dict()


def _bench(model: str, artifacts: list[Path], task: str, batches: Any, seqs: Any, flush_denormals: bool,
           folder: Path, progress: Progress) -> dict[str, Any]:
    import attnopt
    from attnopt.latency import report

    result = attnopt.bench(model, artifacts, task=task, batches=batches or [1], seqs=seqs or [128],
                           flush_denormals=flush_denormals, progress=progress)
    report.plot(result, folder / "latency.png")
    return result.to_dict()


def latency_sentences(latency: dict[str, Any] | None) -> list[str]:
    """What the benchmark can say, one sentence a comparison (only what its confidence interval supports)."""
    from attnopt.latency.report import sentence

    return [f"batch {c['batch']} seq {c['seq']}: {sentence(c)}" for c in (latency or {}).get("comparisons", [])]


def _report(folder: Path, model: str, target: str, precision: str, stages: list[Stage],
            results: dict[str, Any]) -> dict[str, Any]:
    content = {"model": model, "target": target, "precision": precision,
               "stages": [vars(s) for s in stages], "coverage": (results.get("optimize") or {}).get("fusions"),
               "quantization": _precision_summary(results.get("quantize")),
               "parity": results.get("check"), "latency": results.get("bench")}
    (folder / "report.json").write_text(json.dumps(content, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(_markdown(content))
    return content


def _precision_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    keys = ("precision", "method", "calibration", "tolerance", "nodes", "accuracy", "size", "kept", "notes")
    return {k: report[k] for k in keys if k in report}


def _markdown(content: dict[str, Any]) -> str:
    lines = [f"# attnopt run: {content['model']}", "", f"Target `{content['target']}`, precision "
             f"`{content['precision']}`.", "", "## Stages", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['detail']} |" for s in content["stages"]]
    if content["coverage"]:
        lines += ["", "## Fusion coverage", "", "| fusion | sites | fused | became |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['sites']} | {v['fused']} | {', '.join(f'{n} {f}' for f, n in v['forms'].items())} |"
                  for k, v in content["coverage"].items()]
    quant = content.get("quantization")
    if quant:
        acc, size = quant["accuracy"], quant["size"]
        pooled = f"{acc['pooled_cosine']:.6f}" if "pooled_cosine" in acc else "-"
        nodes = ", ".join(f"{n} {p}" for p, n in quant["nodes"].items())
        lines += ["", "## Precision", "", f"`{quant['precision']}` ({quant['method']}), calibrated on "
                  f"{quant['calibration']['source']}; against fp32 on the calibration inputs:", "",
                  "| nodes | max abs | mean abs | token cosine | pooled cosine | size |", "|---|---|---|---|---|---|",
                  f"| {nodes} | {acc.get('max_abs', 0):.3g} | {acc.get('mean_abs', 0):.3g} | "
                  f"{acc.get('token_cosine', 0):.6f} | {pooled} | {size['before_bytes'] / 1e6:.1f} -> "
                  f"{size['after_bytes'] / 1e6:.1f} MB |"]
        if quant["kept"]:
            lines += ["", "Kept in fp32:", ""] + [f"- `{k['node']}`: {k['reason']}" for k in quant["kept"]]
    if content["parity"]:
        lines += ["", "## Parity against PyTorch", "", "| artifact | inputs | output | max abs | cosine | result |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {Path(c['artifact']).name} | {c['inputs']} | {c['name']} | {c['max_abs']:.2e} | "
                  f"{c['cosine']:.6f} | {'pass' if c['passed'] else 'FAIL ' + c['reason']} |"
                  for c in content["parity"]["cases"]]
        lines += ["", "Parity ran ONNX Runtime with its exact numerics (denormals kept, default threads), "
                  "whatever the latency runs set."]
    if content["latency"]:
        lines += ["", *_latency_markdown(content["latency"])]
    return "\n".join(lines) + "\n"


def _latency_markdown(latency: dict[str, Any]) -> list[str]:
    from attnopt.latency.report import how_timed

    baseline = latency["baseline"]
    lines = ["## Latency", "", how_timed(latency), ""]
    lines += [f"- {s}" for s in latency_sentences(latency)]
    lines += [""] + [f"> warning: {w}" for w in latency["warnings"]] + ([""] if latency["warnings"] else [])
    ratio = {(c["backend"], c["batch"], c["seq"]): c for c in latency["comparisons"] if c["against"] == baseline}
    lines += [f"| backend | batch | seq | p50 ms | p90 ms | rounds | vs {baseline} (95% CI) |", "|---|---|---|---|---|---|---|"]
    for r in latency["rows"]:
        c = ratio.get((r["backend"], r["batch"], r["seq"]))
        versus = f"{c['ratio']:.2f}x ({c['ci_low']:.2f}-{c['ci_high']:.2f}), {c['verdict']}" if c else "baseline"
        lines.append(f"| {r['backend']} | {r['batch']} | {r['seq']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['rounds']} | {versus} |")
    return lines + ["", "![latency](latency.png)"]
