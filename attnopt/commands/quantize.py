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
    if acc.get("top1") is not None:  # a language model: its next-token predictions against fp32's
        quality = f"next-token top-1 agreement with fp32 {acc['top1']:.2%}"
        if acc.get("kl") is not None:
            quality += f", KL {acc['kl']:.4f}"
        if acc.get("perplexity") is not None:
            quality += f", perplexity {acc['perplexity']:.2f} (fp32 {acc['perplexity_fp32']:.2f})"
        console.print(quality)
    zero_points = (report.get("layers") or {}).get("zero_points")
    held = "zero points" if zero_points else "held back" if report["precision"] in ("int4", "int8-weights") \
        else "kept in fp32"
    for kept in report["kept"][:limit]:
        console.print(f"[yellow]{held}[/] {escape(kept['node'])}: {escape(kept['reason'])}", highlight=False)
    if len(report["kept"]) > limit:
        console.print(f"... and {len(report['kept']) - limit} more {held} (see --report)")
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
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the model. A decoder gets a folder of its own (created if missing) with its "
                   "tokenizer and a genai_config.json for the new graph.")
@click.option("--precision", required=True, type=click.Choice(["fp16", "bf16", "int8", "int4", "int8-weights"]),
              help="int4 / int8-weights: weight-only (MatMulNBits), activations stay fp32.")
@click.option("--method", type=click.Choice(["dynamic", "static", "rtn", "hqq", "mse", "gptq"]),
              help="int8: dynamic (ONNX Runtime CPU kernels) or static Q/DQ (TensorRT); default static for models "
                   "optimized with --target trt, else dynamic. int4: gptq (default: each row's rounding error "
                   "compensated on the rows after it through the calibration activations' second moment), mse (per "
                   "block, the scale, and with --asymmetric the integer zero point, that minimise the error "
                   "weighted by the calibration activations), rtn (round to nearest; int8-weights' default) or hqq "
                   "(HQQ's scales, plus a small offset MatMul per layer).")
@click.option("--block-size", default=32, show_default=True, type=int,
              help="int4/int8-weights: weights per scale along the inner axis (must divide it).")
@click.option("--symmetric/--asymmetric", default=None,
              help="int4/int8-weights: zero point fixed (8 of 0..15 for 4 bits), or one per block (hqq always), "
                   "for every layer. Default: int4 symmetric (the builder's kernel), with a zero point per block "
                   "for the groups the tolerance needs before any is held at 8 bits; int8-weights symmetric.")
@click.option("--lm-head-bits", default="4", show_default=True, type=click.Choice(["4", "8"]),
              help="int4: the LM head (a tied embedding's transposed copy too) at 4 bits with the rest, the first "
                   "group given zero points (or held at 8 bits) when the tolerance is missed; or pinned at 8 bits.")
@click.option("--shared-embedding/--separate-embedding", default=True, show_default=True,
              help="int4/int8-weights: a tied embedding reads quantized blocks (GatherBlockQuantized) instead of "
                   "keeping its fp32 table: its LM head's own (as the onnxruntime-genai builder does), or 8-bit "
                   "round-to-nearest ones where the head's codes were fitted to its inputs (gptq, mse, hqq).")
@click.option("--equalize/--no-equalize", default=None,
              help="int4/int8-weights: before rounding, divide weight MatMuls' input channels by s = rms(x)^alpha "
                   "where that is free (a norm's scale, a gated MLP's up projection) and multiply their weight rows "
                   "by it (exact in fp32; alpha fitted per site on the calibration activations). Default: on for "
                   "rtn (int8-weights held out: KL halved), off for gptq, mse and hqq.")
@click.option("--accuracy-level", default=4, show_default=True, type=click.IntRange(0, 4),
              help="int4/int8-weights: MatMulNBits' compute type; 4 quantizes activation blocks to int8 (fast on CPU).")
@click.option("--calibration",
              help="'random' (valid random tokens), a text file (one sentence a line, the model's tokenizer) "
                   "or an .npz of inputs. Default: attnopt's 32 English sentences for a causal LM whose tokenizer "
                   "is at hand, else random.")
@click.option("--calibration-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "percentile", "entropy"]), help="int8 static: how ranges are chosen.")
@click.option("--atol", type=float,
              help="Tolerance: largest abs error against fp32 (fp16 default 1e-2; a causal LM has none).")
@click.option("--cosine", type=float,
              help="Tolerance: least token-level (and pooled-embedding) cosine (fp16 0.9999, a causal LM's 0.999; "
                   "bf16 0.9995, a causal LM's 0.995; int8 0.99, int8-weights 0.99, int4 0.95).")
@click.option("--top1", type=float,
              help="Tolerance, logits: least teacher-forced next-token agreement with fp32 (a causal LM's fp16 "
                   "0.95, bf16 0.75; int8 0.99, int8-weights 0.9, int4 0.8).")
@click.option("--kl", type=float,
              help="Tolerance, logits: largest mean KL(fp32 || quantized) of the next-token distributions "
                   "(a causal LM's fp16 0.005, bf16 0.02; int8-weights 0.01, int4 0.1).")
@click.option("--accuracy-aware/--no-accuracy-aware", default=True, show_default=True,
              help="int8: keep the most sensitive layers in fp32 until the tolerance holds (int4: at 8 bits).")
@click.option("--keep-io-types/--no-keep-io-types", default=True, show_default=True,
              help="fp16/bf16: graph inputs and outputs stay fp32 (a decoder's fp16 KV cache excepted, see --fp32-cache).")
@click.option("--fp32-cache", is_flag=True,
              help="fp16 of a decoder: keep its KV cache fp32 at the graph's edges (by default it is fp16 there, as "
                   "inside: half the memory, no Cast per layer and step).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="int8 dynamic: weight scales.")
@click.option("--keep-failed", is_flag=True, help="Write the model even when it misses the tolerance.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@verbosity_options
@click.pass_context
def quantize(ctx: click.Context, model: str, output: str, precision: str, method: str | None, calibration: str | None,
             block_size: int, symmetric: bool | None, lm_head_bits: str, shared_embedding: bool, equalize: bool | None,
             accuracy_level: int,
             calibration_method: str, atol: float | None, cosine: float | None, top1: float | None, kl: float | None,
             accuracy_aware: bool, keep_io_types: bool, fp32_cache: bool, per_channel: bool, keep_failed: bool,
             report_path: str | None, force: bool, as_json: bool) -> None:
    """Convert an fp32 ONNX model to fp16, bf16, int8 or 4/8-bit weights, measured against fp32.

    fp16/bf16 write every cast into the graph and hold in fp32 only what breaks the tolerance;
    int8 quantizes every layer it can and, where that misses the tolerance, keeps the most
    sensitive layers in fp32. Exit 1 when the tolerance cannot be met (nothing is written then,
    unless --keep-failed).

    \b
    Examples:
      attnopt quantize minilm.ort.onnx -o minilm.int8.onnx --precision int8 --calibration sentences.txt
      attnopt quantize minilm.trt.onnx -o minilm.qdq.onnx --precision int8 --method static
      attnopt quantize minilm.ort.onnx -o minilm.fp16.onnx --precision fp16 --report fp16.json
      attnopt quantize smol/model.onnx -o smol-int4/model.onnx --precision int4 --calibration text.txt
    """
    import attnopt

    progress = progress_for(ctx)
    result = attnopt.quantize(model, output, precision=precision, method=method, calibration=calibration,
                              calibration_method=calibration_method,
                              tolerance={"atol": atol, "cosine": cosine, "top1": top1, "kl": kl},
                              block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level,
                              lm_head_bits=int(lm_head_bits), shared_embedding=shared_embedding, equalize=equalize,
                              accuracy_aware=accuracy_aware, keep_io_types=keep_io_types, fp32_cache=fp32_cache,
                              per_channel=per_channel, keep_failed=keep_failed, report=report_path, force=force,
                              progress=progress)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
    elif ctx.obj["verbosity"] > 0:
        _print_summary(result.report)
    if not result.passed:
        written = f"; wrote {result.path} anyway (--keep-failed)" if result.path else "; nothing written"
        click.echo(f"error: {precision} model misses the tolerance: {result.report['failure']}{written}", err=True)
        ctx.exit(EXIT_PARITY)
    runtime = " with its runtime files" if result.report.get("runtime_files") else ""
    progress.info(f"wrote {result.path}{runtime} ({precision}, {result.report['method']}) in {result.seconds:.1f}s")
