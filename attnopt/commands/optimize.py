"""attnopt optimize."""

from __future__ import annotations

import json
from typing import Any

import click

from attnopt.commands.common import progress_for, verbosity_options
from attnopt.commands.tensorrt import tensorrt_version_option
from attnopt.errors import EXIT_PARITY


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
    verification = report["verification"]
    for record in verification["passes"]:
        if record["rolled_back"]:
            console.print(f"[red]rolled back[/] pass {escape(record['pass'])}: {escape(record['reason'])}")
    for anchor, reason in verification["rolled_back_sites"].items():
        console.print(f"[red]rolled back[/] site {escape(anchor)}: {escape(reason)}", highlight=False)
    if verification["verified"] is not None:
        state = "[green]verified[/]" if verification["verified"] else "[red]NOT verified[/]"
        console.print(f"{state} against the input model in {verification['runs']} run(s) of the passes")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the optimized model. A decoder gets a folder of its own (created if missing) "
                   "with its tokenizer and a genai_config.json for the new graph.")
@click.option("--target", default="ort", show_default=True, type=click.Choice(["onnx", "ort", "trt"]),
              help="onnx: standard ops only; ort: ONNX Runtime contrib ops; trt: what the TensorRT version's parser "
                   "reads and fuses (see --tensorrt-version).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the result against the input model on ONNX Runtime; roll back the pass or site that breaks it.")
@click.option("--atol", default=1e-4, show_default=True, type=float)
@click.option("--rtol", default=1e-3, show_default=True, type=float)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the coverage report as JSON.")
@tensorrt_version_option
@click.option("--onnxruntime-version", metavar="VERSION",
              help="For --target ort: the onnxruntime the graph is written for, e.g. 1.31 where it is deployed "
                   "(GroupQueryAttention takes query_seqlens from 1.32) [default: the installed one].")
@click.option("--logits", default="last", show_default=True, type=click.Choice(["last", "all"]),
              help="A decoder with a KV cache: its LM head on each row's last token only, what a generator reads "
                   "(a prefill runs the head once), or at every position (scoring, perplexity, speculative "
                   "verification).")
@click.option("--require-full", is_flag=True, help="Exit 1 when any site is left unfused or a pass rolled back (for CI).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@verbosity_options
@click.pass_context
def optimize(ctx: click.Context, model: str, output: str, target: str, verify: bool, atol: float, rtol: float,
             report_path: str | None, tensorrt_version: str | None, onnxruntime_version: str | None,
             logits: str, require_full: bool, force: bool, as_json: bool) -> None:
    """Fuse attention, layernorm, GELU, RMSNorm and rotary in an ONNX model, verified against the input.

    Prints, per fusion kind, the sites found, how many were fused, and why the rest were not.

    \b
    Example:
      attnopt optimize minilm.onnx -o minilm.ort.onnx --target ort --report coverage.json
      attnopt optimize smol/model.onnx -o smol-ort/model.onnx --target ort
    """
    import attnopt
    from attnopt.parity.tolerance import Tolerance

    progress = progress_for(ctx)
    result = attnopt.optimize(model, output, target=target, verify=verify, tolerance=Tolerance(atol, rtol),
                              report=report_path, force=force, tensorrt_version=tensorrt_version,
                              onnxruntime_version=onnxruntime_version, all_logits=logits == "all",
                              progress=progress)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
    elif ctx.obj["verbosity"] > 0:
        _print_coverage(result.report)
    table = result.report.get("tensorrt_table")
    against = f", TensorRT {table['version']} operator table: {table['chosen_because']}" if table else ""
    runtime = " with its runtime files" if result.runtime_files else ""
    progress.info(f"wrote {result.path}{runtime} ({target}{against}) in {result.seconds:.1f}s")
    if require_full and (result.unfused or not result.ok):
        click.echo(f"error: {result.unfused} site(s) left unfused or a pass rolled back (--require-full)", err=True)
        ctx.exit(EXIT_PARITY)
