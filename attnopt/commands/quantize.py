"""attnopt quantize."""

from __future__ import annotations

import json
from typing import Any

import click

from attnopt.commands.common import progress_for, verbosity_options
from attnopt.errors import EXIT_PARITY


def _print_summary(report: dict[str, Any], limit: int = 12) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True)
    acc, size = report["accuracy"], report["size"]
    table = Table("precision", "method", "nodes", "max abs", "mean abs", "token cos", "pooled cos", "size", box=None)
    pooled = f"{acc['pooled_cosine']:.6f}" if "pooled_cosine" in acc else "-"
    nodes = ", ".join(f"{n} {p}" for p, n in report["nodes"].items())
    table.add_row(report["precision"], report["method"], nodes, f"{acc.get('max_abs', 0):.3g}",
                  f"{acc.get('mean_abs', 0):.3g}", f"{acc.get('token_cosine', 0):.6f}", pooled,
                  f"{size['before_bytes'] / 1e6:.1f} -> {size['after_bytes'] / 1e6:.1f} MB ({size['ratio']:.2f}x)")
    console.print(table)
    for kept in report["kept"][:limit]:
        console.print(f"[yellow]kept in fp32[/] {escape(kept['node'])}: {escape(kept['reason'])}", highlight=False)
    if len(report["kept"]) > limit:
        console.print(f"... and {len(report['kept']) - limit} more kept in fp32 (see --report)")
    clamped = report.get("clamped", [])
    if clamped:
        total = sum(c["clamped"] for c in clamped)
        flushed = sum(c["flushed_to_zero"] for c in clamped)
        console.print(f"weights: {total} value(s) clamped to the {report['precision']} range, {flushed} tiny value(s) "
                      f"flushed to zero, in {len(clamped)} tensor(s) (see --report)")
    for issue in report.get("placement", {}).get("issues", [])[:limit]:
        console.print(f"[red]Q/DQ placement[/] {escape(issue)}")
    for note in report.get("notes", []):
        console.print(f"note: {escape(note)}")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option("--precision", required=True, type=click.Choice(["fp16", "bf16", "int8"]))
@click.option("--method", type=click.Choice(["dynamic", "static"]),
              help="int8: dynamic (ONNX Runtime CPU kernels) or static Q/DQ (TensorRT). Default: static for "
                   "models optimized with --target trt, else dynamic.")
@click.option("--calibration", default="random", show_default=True,
              help="'random' (valid random tokens), a text file (one sentence a line, the model's tokenizer) "
                   "or an .npz of inputs.")
@click.option("--calibration-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "percentile", "entropy"]), help="int8 static: how ranges are chosen.")
@click.option("--atol", type=float, help="Tolerance: largest abs error against fp32 (fp16 default 1e-2).")
@click.option("--cosine", type=float,
              help="Tolerance: least token-level (and pooled-embedding) cosine (fp16 0.9999, int8 0.99).")
@click.option("--accuracy-aware/--no-accuracy-aware", default=True, show_default=True,
              help="int8: keep the most sensitive layers in fp32 until the tolerance holds.")
@click.option("--keep-io-types/--no-keep-io-types", default=True, show_default=True,
              help="fp16/bf16: graph inputs and outputs stay fp32.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="int8 dynamic: weight scales.")
@click.option("--keep-failed", is_flag=True, help="Write the model even when it misses the tolerance.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@verbosity_options
@click.pass_context
def quantize(ctx: click.Context, model: str, output: str, precision: str, method: str | None, calibration: str,
             calibration_method: str, atol: float | None, cosine: float | None, accuracy_aware: bool,
             keep_io_types: bool, per_channel: bool, keep_failed: bool, report_path: str | None, force: bool,
             as_json: bool) -> None:
    """Convert an fp32 ONNX model to fp16, bf16 or int8, measured against fp32.

    fp16/bf16 write every cast into the graph and hold in fp32 only what breaks the tolerance;
    int8 quantizes every layer it can and, where that misses the tolerance, keeps the most
    sensitive layers in fp32. Exit 1 when the tolerance cannot be met (nothing is written then,
    unless --keep-failed).

    \b
    Examples:
      attnopt quantize minilm.ort.onnx -o minilm.int8.onnx --precision int8 --calibration sentences.txt
      attnopt quantize minilm.trt.onnx -o minilm.qdq.onnx --precision int8 --method static
      attnopt quantize minilm.ort.onnx -o minilm.fp16.onnx --precision fp16 --report fp16.json
    """
    import attnopt

    progress = progress_for(ctx)
    result = attnopt.quantize(model, output, precision=precision, method=method, calibration=calibration,
                              calibration_method=calibration_method, tolerance={"atol": atol, "cosine": cosine},
                              accuracy_aware=accuracy_aware, keep_io_types=keep_io_types, per_channel=per_channel,
                              keep_failed=keep_failed, report=report_path, force=force, progress=progress)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
    elif ctx.obj["verbosity"] > 0:
        _print_summary(result.report)
    if not result.passed:
        written = f"; wrote {result.path} anyway (--keep-failed)" if result.path else "; nothing written"
        click.echo(f"error: {precision} model misses the tolerance: {result.report['failure']}{written}", err=True)
        ctx.exit(EXIT_PARITY)
    progress.info(f"wrote {result.path} ({precision}, {result.report['method']}) in {result.seconds:.1f}s")
