"""attnopt doctor, attnopt build and attnopt inspect: the TensorRT commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from attnopt.commands.common import progress_for, verbosity_options
from attnopt.errors import EXIT_PARITY


def _profiles_option(text: str | None) -> Any:
    from attnopt.engine.profiles import parse_profiles

    return parse_profiles(text) if text else None


def tensorrt_version_option(command: Any) -> Any:
    """--tensorrt-version, shared by every command that checks or builds for a TensorRT."""
    return click.option(
        "--tensorrt-version", metavar="VERSION",
        help="Which TensorRT's ONNX operator table to use: 10.1, 10.15, 11.0, 11.5, or 10.x / 11.x for the newest "
             "of a line (a full version such as 10.16.1 takes the newest table at or below it) "
             "[default: the installed TensorRT's, else the newest].")(command)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", default="trt", show_default=True, type=click.Choice(["trt"]))
@click.option("--shapes", help="Optimization profiles, NAME:MIN,OPT,MAX per input, e.g. "
              "'input_ids:1x16,8x128,32x512 attention_mask:1x16,8x128,32x512' [default: from the export sidecar].")
@tensorrt_version_option
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@verbosity_options
@click.pass_context
def doctor(ctx: click.Context, model: str, target: str, shapes: str | None, tensorrt_version: str | None,
           as_json: bool) -> None:
    """Check, without TensorRT, that TensorRT can build MODEL: ops, opset, dtypes, profiles, attention form.

    Exits 1 when the build would fail; warnings (attention TensorRT will not fuse) do not fail.

    \b
    Example:
      attnopt doctor minilm.trt.onnx --target trt
    """
    from attnopt.engine.build import resolve_profiles
    from attnopt.engine.doctor import doctor as run_doctor
    from attnopt.engine.optable import select_table
    from attnopt.errors import AttnoptError

    table = select_table(tensorrt_version)  # a bad or mismatched version fails before the model is read
    profiles = _profiles_option(shapes)
    try:
        profiles = resolve_profiles(Path(model), profiles) if Path(model).is_file() else profiles
    except AttnoptError:
        pass  # doctor reports profile problems itself, as findings
    report = run_doctor(model, profiles, table=table)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            click.echo(f"{p.severity}: {p.node}: {p.message} ({p.fix})", err=True)
        progress_for(ctx).info(f"{len(report.errors)} error(s), {len(report.problems) - len(report.errors)} warning(s) "
                               f"against TensorRT {table.version}'s ONNX operator table ({table.chosen_because})")
    if not report.ok:
        ctx.exit(EXIT_PARITY)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the engine.")
@click.option("--shapes", help="Optimization profiles, NAME:MIN,OPT,MAX per input [default: from the export sidecar].")
@click.option("--precision", default="graph", show_default=True, type=click.Choice(["graph", "fp16", "int8"]),
              help="graph: strongly typed, as attnopt quantize wrote it; fp16/int8 on an fp32 graph: TensorRT 10's "
                   "builder flags (TensorRT 11 has none: it says which attnopt quantize to run).")
@click.option("--optimization-level", default=3, show_default=True, type=click.IntRange(0, 5))
@click.option("--workspace", "workspace_gb", default=4.0, show_default=True, type=float, help="Workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Reuse and update this timing cache.")
@click.option("--force", is_flag=True, help="Replace an existing engine.")
@tensorrt_version_option
@verbosity_options
@click.pass_context
def build(ctx: click.Context, model: str, output: str, shapes: str | None, precision: str, optimization_level: int,
          workspace_gb: float, timing_cache: str | None, force: bool, tensorrt_version: str | None) -> None:
    """Build a TensorRT engine from MODEL (needs TensorRT and an NVIDIA GPU); runs doctor first.

    \b
    Example:
      attnopt build minilm.trt.onnx -o minilm.engine --timing-cache trt.cache
    """
    from attnopt.engine.build import build as run_build

    result = run_build(model, output, profiles=_profiles_option(shapes), precision=precision,
                       optimization_level=optimization_level, workspace_gb=workspace_gb, timing_cache=timing_cache,
                       force=force, tensorrt_version=tensorrt_version, progress=progress_for(ctx))
    table = result.record["operator_table"]
    progress_for(ctx).info(f"wrote {result.engine} (TensorRT {result.record['tensorrt']}, {result.record['gpu']}; "
                           f"checked against operator table {table['version']}) and {result.sidecar}")


@click.command()
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
        progress_for(ctx).warn(warning)
