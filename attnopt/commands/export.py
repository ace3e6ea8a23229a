"""attnopt models and attnopt export."""

from __future__ import annotations

import json
from typing import Any

import click

from attnopt.commands.common import progress_for, verbosity_options
from attnopt.errors import EXIT_PARITY


@click.command()
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


def _print_generation_parity(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("scenario", "step", "batch x seq", "past", "logits max abs", "cache max abs", "result", box=None)
    for s in result.steps:
        verdict = "[green]pass[/]" if s.passed else f"[red]FAIL[/] {s.reason}"
        table.add_row(s.scenario, str(s.step), f"{s.batch} x {s.seq}", str(s.past), f"{s.logits_max_abs:.2e}",
                      f"{max(s.layer_max_abs, default=0.0):.2e}", verdict)
    console = Console(stderr=True)
    console.print(table)
    console.print("per-layer cache max abs: " + ", ".join(f"{e:.1e}" for e in result.layer_max_abs))
    if result.tokens is not None:
        divergence = result.tokens.first_divergence
        console.print("greedy tokens vs Hugging Face generate: " + (
            "[green]identical[/]" if divergence is None else
            f"[red]differ[/] first at row {divergence['row']} step {divergence['step']} "
            f"(expected {divergence['expected']}, got {divergence['actual']})"))
    if result.error:
        console.print(f"[red]error:[/] {result.error}")


def _print_verification(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    if hasattr(result, "steps"):
        _print_generation_parity(result)
        return
    table = Table("shape (batch x seq)", "output", "max abs", "max rel", "cosine", "result", box=None)
    for shape in result.shapes:
        for out in shape.outputs:
            verdict = "[green]pass[/]" if out.passed else f"[red]FAIL[/] {out.reason}"
            table.add_row(f"{shape.batch} x {shape.seq}", out.name, f"{out.max_abs:.2e}", f"{out.max_rel:.2e}",
                          f"{out.cosine:.6f}", verdict)
    Console(stderr=True).print(table)


@click.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the .onnx file (a missing folder is created) [default: ./NAME.onnx, for a decoder "
                   "./NAME/model.onnx].")
@click.option("--task", type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]),
              help="[default: causal-lm where the config names a ...ForCausalLM, else feature-extraction]")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="causal-lm: export with the KV cache as inputs/outputs, into a folder a runtime loads "
                   "(--no-cache: logits only).")
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
def export(ctx: click.Context, model: str, output: str | None, task: str | None, cache: bool, batch: int, seq: int,
           opset: int | None, exporter: str, static: bool, verify: bool, atol: float, rtol: float, force: bool,
           as_json: bool) -> None:
    """Export MODEL to ONNX and verify it against PyTorch.

    MODEL is a preset (see `attnopt models`), a local Hugging Face model folder, a hub id already in the
    local Hugging Face cache, or path/to/file.py:factory.

    \b
    Example:
      attnopt export minilm -o minilm.onnx
      attnopt export gpt2-tiny -o gpt2.onnx --task causal-lm --no-cache --exporter torchscript
      attnopt export smollm2 -o smollm2/model.onnx      # KV cache; verified over generations
    """
    import attnopt
    from attnopt.parity.tolerance import Tolerance

    progress = progress_for(ctx)
    result = attnopt.export(model, output, task=task, cache=cache, batch=batch, seq=seq, opset=opset,
                            exporter=exporter, dynamic=not static, verify=verify, tolerance=Tolerance(atol, rtol),
                            force=force, progress=progress)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.verification and ctx.obj["verbosity"] > 0:
        _print_verification(result.verification)
    progress.info(f"wrote {result.path} ({result.exporter}, opset {result.opset}) and {result.sidecar}")
    if result.runtime_files:
        progress.info(f"runtime folder {result.path.parent}: {', '.join(result.runtime_files)}")
    if not result.ok:
        click.echo(f"error: {result.path} differs from PyTorch beyond atol {atol:g} / rtol {rtol:g}", err=True)
        ctx.exit(EXIT_PARITY)
