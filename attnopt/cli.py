"""The `attnopt` command line. Commands parse options, call the API and print; no logic of their own.
Heavy packages are imported inside the commands so that `attnopt --help` is instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from attnopt import __version__
from attnopt.errors import EXIT_PARITY, EXIT_USAGE, AttnoptError


class AttnoptGroup(click.Group):
    """Turns AttnoptError into one line on stderr and its exit code; a traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AttnoptError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # an unexpected failure still gets one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_USAGE)


def _set_verbosity(level: int):
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(dict)
            root = ctx.find_root()
            root.ensure_object(dict)
            root.obj["verbosity"] = level
    return callback


def verbosity_options(command: Any) -> Any:
    """-q/-v are accepted after the command name too (`attnopt export -q ...`)."""
    command = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity(0),
                           help="Print only results and errors.")(command)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbosity(2),
                        help="Print more detail.")(command)


def _progress(ctx: click.Context) -> Any:
    from attnopt.console import Progress

    return Progress(ctx.obj["verbosity"])


def _quiet_libraries() -> None:
    """torch and transformers log warnings that say nothing to an attnopt user."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


@click.group(cls=AttnoptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="attnopt")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print more detail.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool, debug: bool) -> None:
    """attnopt: Transformer models from PyTorch to fast, verified inference.

    \b
    Example:
      attnopt export minilm -o minilm.onnx
    """
    ctx.ensure_object(dict)
    ctx.obj.setdefault("verbosity", 0 if quiet else (2 if verbose else 1))
    ctx.obj["debug"] = debug
    if not verbose:
        _quiet_libraries()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def models(as_json: bool) -> None:
    """List the built-in model presets.

    \b
    Example:
      attnopt models
    """
    from attnopt.models.presets import PRESETS

    if as_json:
        click.echo(json.dumps({name: p.description for name, p in PRESETS.items()}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("preset", "what it is", box=None)
    for name, preset in PRESETS.items():
        table.add_row(name, preset.description)
    Console().print(table)


def _print_verification(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("shape (batch x seq)", "output", "max abs", "max rel", "cosine", "result", box=None)
    for shape in result.shapes:
        for out in shape.outputs:
            verdict = "[green]pass[/]" if out.passed else f"[red]FAIL[/] {out.reason}"
            table.add_row(f"{shape.batch} x {shape.seq}", out.name, f"{out.max_abs:.2e}", f"{out.max_rel:.2e}",
                          f"{out.cosine:.6f}", verdict)
    Console(stderr=True).print(table)


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--task", default="feature-extraction", show_default=True,
              type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]))
@click.option("--batch", default=2, show_default=True, type=int, help="Batch size of the example inputs.")
@click.option("--seq", default=16, show_default=True, type=int, help="Sequence length of the example inputs.")
@click.option("--opset", type=int, help="ONNX opset [default: the newest onnxruntime runs, capped at 22].")
@click.option("--exporter", default="dynamo", show_default=True, type=click.Choice(["dynamo", "torchscript"]),
              help="dynamo falls back to torchscript when it fails.")
@click.option("--static", is_flag=True, help="Bake the example shape in (no dynamic batch/sequence axes).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the export against PyTorch on ONNX Runtime at two shapes.")
@click.option("--atol", default=1e-4, show_default=True, type=float)
@click.option("--rtol", default=1e-3, show_default=True, type=float)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@verbosity_options
@click.pass_context
def export(ctx: click.Context, model: str, output: str, task: str, batch: int, seq: int, opset: int | None,
           exporter: str, static: bool, verify: bool, atol: float, rtol: float, force: bool,
           as_json: bool) -> None:
    """Export MODEL to ONNX and verify it against PyTorch.

    MODEL is a preset (see `attnopt models`), a local Hugging Face model folder, a hub id already in the
    local Hugging Face cache, or path/to/file.py:factory.

    \b
    Example:
      attnopt export minilm -o minilm.onnx
      attnopt export gpt2-tiny -o gpt2.onnx --task causal-lm --exporter torchscript
    """
    import attnopt
    from attnopt.parity.metrics import Tolerance

    progress = _progress(ctx)
    result = attnopt.export(model, output, task=task, batch=batch, seq=seq, opset=opset, exporter=exporter,
                            dynamic=not static, verify=verify, tolerance=Tolerance(atol, rtol), force=force,
                            progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.verification and ctx.obj["verbosity"] > 0:
        _print_verification(result.verification)
    progress.info(f"wrote {result.path} ({result.exporter}, opset {result.opset}) and {result.sidecar}")
    if not result.ok:
        click.echo(f"error: {result.path} differs from PyTorch beyond atol {atol:g} / rtol {rtol:g}", err=True)
        ctx.exit(EXIT_PARITY)


def _print_coverage(report: dict[str, Any], limit: int = 20) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True)
    table = Table("fusion", "sites", "fused", "became", box=None)
    for kind, f in report["fusions"].items():
        forms = ", ".join(f"{n} {form}" for form, n in f["forms"].items())
        style = "green" if f["fused"] == f["sites"] else "yellow"
        table.add_row(kind, str(f["sites"]), f"[{style}]{f['fused']}[/]", forms)
    console.print(table)
    unfused = [(kind, u) for kind, f in report["fusions"].items() for u in f["unfused"]]
    for kind, u in unfused[:limit]:
        console.print(f"[yellow]unfused[/] {kind} at {escape(u['node'])}: {escape(u['reason'])}", highlight=False)
    if len(unfused) > limit:
        console.print(f"... and {len(unfused) - limit} more (see --report)")
    for record in report["verification"]["passes"]:
        if record["rolled_back"]:
            console.print(f"[red]rolled back[/] pass {record['pass']}: {record['reason']}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the optimized model.")
@click.option("--target", default="ort", show_default=True, type=click.Choice(["onnx", "ort", "trt"]),
              help="onnx: standard ops only; ort: ONNX Runtime contrib ops; trt: what TensorRT fuses.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check each pass against the input model on ONNX Runtime; roll back what breaks.")
@click.option("--atol", default=1e-4, show_default=True, type=float)
@click.option("--rtol", default=1e-3, show_default=True, type=float)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the coverage report as JSON.")
@click.option("--require-full", is_flag=True, help="Exit 1 when any site is left unfused or a pass rolled back (for CI).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@verbosity_options
@click.pass_context
def optimize(ctx: click.Context, model: str, output: str, target: str, verify: bool, atol: float, rtol: float,
             report_path: str | None, require_full: bool, force: bool, as_json: bool) -> None:
    """Fuse attention, layernorm, GELU and RMSNorm in an ONNX model, verified pass by pass.

    Prints, per fusion kind, the sites found, how many were fused, and why the rest were not.

    \b
    Example:
      attnopt optimize minilm.onnx -o minilm.ort.onnx --target ort --report coverage.json
    """
    import attnopt
    from attnopt.parity.metrics import Tolerance

    progress = _progress(ctx)
    result = attnopt.optimize(model, output, target=target, verify=verify, tolerance=Tolerance(atol, rtol),
                              report=report_path, force=force, progress=progress)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
    elif ctx.obj["verbosity"] > 0:
        _print_coverage(result.report)
    progress.info(f"wrote {result.path} ({target}) in {result.seconds:.1f}s")
    if require_full and (result.unfused or not result.ok):
        click.echo(f"error: {result.unfused} site(s) left unfused or a pass rolled back (--require-full)", err=True)
        ctx.exit(EXIT_PARITY)


@cli.command()
@click.argument("model")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--task", default="feature-extraction", show_default=True,
              type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]))
@click.option("--shapes", help="Input shapes as BATCHxSEQ, comma-separated [default: 1x2,2x16,4x128].")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
              help="Your inputs: an .npz keyed by input name, or a text file (one text a line) for the tokenizer.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--atol", type=float, help="Override the absolute tolerance for every output.")
@click.option("--rtol", type=float, help="Override the relative tolerance.")
@click.option("--cosine", type=float, help="Override the minimum cosine similarity.")
@click.option("--top1", type=float, help="Override the minimum top-1 agreement of logits (0..1).")
@click.option("--config", type=click.Path(dir_okay=False), help="A TOML file with a [check] table (default: "
              "./attnopt.toml, or [tool.attnopt.check] in the nearest pyproject.toml).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--junit-xml", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML for CI.")
@click.option("--bisect", is_flag=True, help="On a failure, name the first node whose output diverges.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where ONNX artifacts run (cuda needs onnxruntime-gpu).")
@verbosity_options
@click.pass_context
def check(ctx: click.Context, model: str, artifacts: tuple[str, ...], task: str, shapes: str | None,
          inputs_file: str | None, seed: int, atol: float | None, rtol: float | None, cosine: float | None,
          top1: float | None, config: str | None, json_path: str | None, junit_path: str | None,
          bisect: bool, device: str) -> None:
    """Check that each ARTIFACT matches the PyTorch MODEL (exit 0), or not (exit 1).

    Tolerances follow each artifact's precision (fp32: atol 1e-4, rtol 1e-3; fp16: atol 1e-2 and
    cosine >= 0.9999; int8: cosine >= 0.99 and top-1 >= 99%), overridable in a config file and here.

    \b
    Example:
      attnopt check minilm minilm.onnx minilm.ort.onnx --junit-xml parity.xml
    """
    import attnopt
    from attnopt.parity import report
    from attnopt.parity.inputs import parse_shapes

    result = attnopt.check(model, list(artifacts), task=task, shapes=parse_shapes(shapes) if shapes else None,
                           inputs=inputs_file, seed=seed, config=config, bisect=bisect, device=device,
                           progress=_progress(ctx),
                           tolerances={"atol": atol, "rtol": rtol, "cosine": cosine, "top1": top1})
    if json_path:
        report.write_json(result, Path(json_path))
    if junit_path:
        report.write_junit(result, Path(junit_path))
    if ctx.obj["verbosity"] > 0:
        report.print_table(result)
    failures = result.failures
    if failures:
        first = failures[0]
        click.echo(f"error: {len(failures)} of {len(result.cases)} checks failed; first: "
                   f"{Path(first.artifact).name} inputs {first.inputs} output {first.metrics.name}: {first.metrics.reason}",
                   err=True)
        ctx.exit(EXIT_PARITY)
    _progress(ctx).info(f"all {len(result.cases)} checks passed in {result.seconds:.1f}s")


def _profiles_option(text: str | None) -> Any:
    from attnopt.engine.profiles import parse_profiles

    return parse_profiles(text) if text else None


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", default="trt", show_default=True, type=click.Choice(["trt"]))
@click.option("--shapes", help="Optimization profiles, NAME:MIN,OPT,MAX per input, e.g. "
              "'input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512' [default: from the export sidecar].")
@click.option("--tensorrt-version", default="10.1", show_default=True, help="Which published operator table to check against.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@verbosity_options
@click.pass_context
def doctor(ctx: click.Context, model: str, target: str, shapes: str | None, tensorrt_version: str,
           as_json: bool) -> None:
    """Check, without TensorRT, that TensorRT can build MODEL: ops, opset, dtypes, profiles, attention form.

    Exits 1 when the build would fail; warnings (attention TensorRT will not fuse) do not fail.

    \b
    Example:
      attnopt doctor minilm.trt.onnx --target trt
    """
    from attnopt.engine.build import resolve_profiles
    from attnopt.engine.doctor import doctor as run_doctor
    from attnopt.errors import AttnoptError

    profiles = _profiles_option(shapes)
    try:
        profiles = resolve_profiles(Path(model), profiles) if Path(model).is_file() else profiles
    except AttnoptError:
        pass  # doctor reports profile problems itself, as findings
    report = run_doctor(model, profiles, tensorrt_version)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            click.echo(f"{p.severity}: {p.node}: {p.message} ({p.fix})", err=True)
        _progress(ctx).info(f"{len(report.errors)} error(s), {len(report.problems) - len(report.errors)} warning(s) "
                            f"against TensorRT {report.tensorrt}'s ONNX operator table")
    if not report.ok:
        ctx.exit(EXIT_PARITY)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the engine.")
@click.option("--shapes", help="Optimization profiles, NAME:MIN,OPT,MAX per input [default: from the export sidecar].")
@click.option("--precision", default="graph", show_default=True, type=click.Choice(["graph", "fp16", "int8"]),
              help="graph: strongly typed, as the precision passes wrote it; fp16/int8: TensorRT 10's builder flags.")
@click.option("--optimization-level", default=3, show_default=True, type=click.IntRange(0, 5))
@click.option("--workspace", "workspace_gb", default=4.0, show_default=True, type=float, help="Workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Reuse and update this timing cache.")
@click.option("--force", is_flag=True, help="Replace an existing engine.")
@verbosity_options
@click.pass_context
def build(ctx: click.Context, model: str, output: str, shapes: str | None, precision: str, optimization_level: int,
          workspace_gb: float, timing_cache: str | None, force: bool) -> None:
    """Build a TensorRT engine from MODEL (needs TensorRT and an NVIDIA GPU); runs doctor first.

    \b
    Example:
      attnopt build minilm.trt.onnx -o minilm.engine --timing-cache trt.cache
    """
    from attnopt.engine.build import build as run_build

    result = run_build(model, output, profiles=_profiles_option(shapes), precision=precision,
                       optimization_level=optimization_level, workspace_gb=workspace_gb, timing_cache=timing_cache,
                       force=force, progress=_progress(ctx))
    _progress(ctx).info(f"wrote {result.engine} (TensorRT {result.record['tensorrt']}, {result.record['gpu']}) "
                        f"and {result.sidecar}")


@cli.command()
@click.argument("engine", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the layers as JSON.")
@verbosity_options
@click.pass_context
def inspect(ctx: click.Context, engine: str, as_json: bool) -> None:
    """List an engine's layers and kernels, and say which attention blocks TensorRT fused.

    \b
    Example:
      attnopt inspect minilm.engine
    """
    from attnopt.engine.inspect import attention_fusion_warnings, layers

    found = layers(Path(engine))
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for layer in found:
            click.echo(f"{layer.get('LayerType', '?'):>20}  {layer.get('Name')}  {layer.get('TacticName', '')}")
    for warning in attention_fusion_warnings(Path(engine)):
        _progress(ctx).warn(warning)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: give integers separated by commas, e.g. 1,8,32") from exc


@cli.command()
@click.argument("model")
@click.argument("artifacts", nargs=-1)
@click.option("--task", default="feature-extraction", show_default=True,
              type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]))
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--seq", "seqs", default="128", show_default=True, help="Sequence lengths, e.g. 32,128,512.")
@click.option("--baseline", default="torch-cpu", show_default=True, help="The backend speedups are measured against.")
@click.option("--warmup", default=5, show_default=True, type=int)
@click.option("--runs", default=30, show_default=True, type=int, help="Timed runs (at least).")
@click.option("--budget", "budget_s", type=float, help="Keep timing until this many seconds per point have passed.")
@click.option("--threads", default=2, show_default=True, type=int, help="CPU threads for PyTorch and ONNX Runtime.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), help="Write a Markdown summary.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG plot (latency against seq).")
@verbosity_options
@click.pass_context
def bench(ctx: click.Context, model: str, artifacts: tuple[str, ...], task: str, batches: str, seqs: str,
          baseline: str, warmup: int, runs: int, budget_s: float | None, threads: int, json_path: str | None,
          md_path: str | None, plot_path: str | None) -> None:
    """Time MODEL in PyTorch and each ARTIFACT on every backend at hand, across batch and sequence sizes.

    Backends: PyTorch eager (CPU; CUDA where present), ONNX Runtime CPU and CUDA for .onnx artifacts,
    TensorRT for engines; one that is not available is listed as skipped, with the reason.

    \b
    Example:
      attnopt bench minilm minilm.onnx minilm.ort.onnx --batch 1,8 --seq 32,128 --plot latency.png
    """
    import attnopt
    from attnopt.latency import report

    result = attnopt.bench(model, list(artifacts), task=task, batches=_int_list(batches), seqs=_int_list(seqs),
                           baseline=baseline, warmup=warmup, runs=runs, budget_s=budget_s, threads=threads,
                           progress=_progress(ctx))
    if json_path:
        report.write_json(result, Path(json_path))
    if md_path:
        Path(md_path).write_text(report.markdown(result))
    if plot_path:
        report.plot(result, Path(plot_path))
    if ctx.obj["verbosity"] > 0:
        report.print_table(result)


@cli.command()
@click.argument("model", required=False, default="minilm")
@click.option("--out", "out", default="attnopt-out", show_default=True, type=click.Path(file_okay=False),
              help="The folder for every artifact, report.json and report.md.")
@click.option("--task", default="feature-extraction", show_default=True,
              type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]))
@click.option("--target", type=click.Choice(["onnx", "ort", "trt"]),
              help="[default: trt where TensorRT and a GPU are, else ort]")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--batch", "batches", default="1", show_default=True, help="Benchmark batch sizes, e.g. 1,8.")
@click.option("--seq", "seqs", default="128", show_default=True, help="Benchmark sequence lengths, e.g. 32,128.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
@verbosity_options
@click.pass_context
def run(ctx: click.Context, model: str, out: str, task: str, target: str | None, precision: str, batches: str,
        seqs: str, as_json: bool) -> None:
    """The whole job: export, optimize, build (with TensorRT), check parity and benchmark, into one folder.

    MODEL defaults to the bundled real all-MiniLM-L6-v2. Stages whose inputs are unchanged are skipped on
    a re-run; the first failing stage stops the run and says why.

    \b
    Example:
      attnopt run --out out/
      attnopt run gpt2-tiny --out out-gpt2 --target onnx --batch 1,8 --seq 32,128
    """
    from attnopt.pipeline import run as run_pipeline

    result = run_pipeline(model, out, task=task, target=target, precision=precision, batches=_int_list(batches),
                          seqs=_int_list(seqs), progress=_progress(ctx))
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=str))
    progress = _progress(ctx)
    for stage in result.stages:
        progress.info(f"{stage.name:>8}: {stage.status} {stage.detail}".rstrip())
    progress.info(f"wrote {result.out / 'report.md'} and {result.out / 'report.json'}")
    if not result.ok:
        failed = next(s for s in result.stages if s.status == "failed")
        click.echo(f"error: stage {failed.name} failed: {failed.detail}", err=True)
        ctx.exit(EXIT_PARITY)


def main() -> None:
    cli(prog_name="attnopt")


if __name__ == "__main__":
    sys.exit(main())
