"""attnopt bench and attnopt run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from attnopt.commands.common import int_list, progress_for, verbosity_options
from attnopt.commands.tensorrt import tensorrt_version_option
from attnopt.errors import EXIT_PARITY


@click.command()
@click.argument("model")
@click.argument("artifacts", nargs=-1)
@click.option("--task", type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]),
              help="[default: causal-lm where the config names a ...ForCausalLM, else feature-extraction]")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--seq", "seqs", default="128", show_default=True,
              help="Sequence lengths, e.g. 32,128,512 (a decoder with a KV cache: prefill prompt lengths).")
@click.option("--past", "pasts", default="0,128,512", show_default=True,
              help="A decoder with a KV cache: past lengths to time one decode step at (those its context holds).")
@click.option("--baseline", default="torch-cpu", show_default=True, help="The backend every other is compared with.")
@click.option("--warmup", default=5, show_default=True, type=int, help="Warm-up calls at least (then until stable).")
@click.option("--runs", default=50, show_default=True, type=int,
              help="Timing rounds per backend (at least); the confidence intervals are over rounds.")
@click.option("--budget", "budget_s", type=float,
              help="Keep adding rounds until this many seconds per point have passed.")
@click.option("--threads", default=2, show_default=True, type=int, help="CPU threads for PyTorch and ONNX Runtime.")
@click.option("--flush-denormals/--no-flush-denormals", default=True, show_default=True,
              help="ONNX Runtime CPU: flush denormals to zero (masked attention makes them on x86; 15-25% faster).")
@click.option("--interleave/--blocks", default=True, show_default=True,
              help="Time all backends in shuffled rounds (falls back to blocks, saying so, when they do not fit "
                   "in memory together), or one after the other.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), help="Write a Markdown summary.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG plot (spread per backend).")
@verbosity_options
@click.pass_context
def bench(ctx: click.Context, model: str, artifacts: tuple[str, ...], task: str | None, batches: str, seqs: str,
          pasts: str, baseline: str, warmup: int, runs: int, budget_s: float | None, threads: int,
          flush_denormals: bool, interleave: bool, json_path: str | None, md_path: str | None,
          plot_path: str | None) -> None:
    """Time MODEL in PyTorch and each ARTIFACT on every backend at hand, across batch and sequence sizes.

    Backends: PyTorch eager (CPU; CUDA where present), ONNX Runtime CPU and CUDA for .onnx artifacts,
    TensorRT for engines; one that is not available is listed as skipped, with the reason. All are timed
    in shuffled rounds; each artifact is compared with the first one and with the baseline as a ratio of
    medians with a 95% confidence interval: faster, slower, or no measurable difference. Decoders with a
    KV cache (an exported folder or its model.onnx) are timed at prefill (a --seq prompt on an empty past)
    and at decode (one token on each --past), with tokens/s.

    \b
    Example:
      attnopt bench minilm minilm.onnx minilm.ort.onnx --batch 1,8 --seq 32,128 --plot latency.png
      attnopt bench smollm2 smollm2/ smollm2-ort/ --seq 128 --past 0,128,512
    """
    import attnopt
    from attnopt.latency import report

    result = attnopt.bench(model, list(artifacts), task=task, batches=int_list(batches), seqs=int_list(seqs),
                           pasts=int_list(pasts), baseline=baseline, warmup=warmup, runs=runs, budget_s=budget_s,
                           threads=threads, flush_denormals=flush_denormals, interleave=interleave,
                           progress=progress_for(ctx))
    if json_path:
        report.write_json(result, Path(json_path))
    if md_path:
        report.write_markdown(result, Path(md_path))
    if plot_path:
        report.plot(result, Path(plot_path))
    if ctx.obj["verbosity"] > 0:
        report.print_table(result)


@click.command()
@click.argument("model", required=False, default="minilm")
@click.option("--out", "out", default="attnopt-out", show_default=True, type=click.Path(file_okay=False),
              help="The folder for every artifact, report.json and report.md.")
@click.option("--task", type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]),
              help="[default: causal-lm where the config names a ...ForCausalLM, else feature-extraction]")
@click.option("--target", type=click.Choice(["onnx", "ort", "trt"]),
              help="[default: trt where TensorRT and a GPU are, else ort]")
@click.option("--precision", default="fp32", show_default=True,
              type=click.Choice(["fp32", "fp16", "int8", "int4", "int8-weights"]),
              help="int4 / int8-weights: weight-only, for decoders.")
@tensorrt_version_option
@click.option("--calibration",
              help="fp16/int8/int4/int8-weights: 'random' valid tokens, a text file (the model's tokenizer) or an "
                   ".npz of inputs. Default: attnopt's English sentences for a causal LM, else random.")
@click.option("--batch", "batches", default="1", show_default=True, help="Benchmark batch sizes, e.g. 1,8.")
@click.option("--seq", "seqs", default="128", show_default=True,
              help="Benchmark sequence lengths, e.g. 32,128 (a decoder: prefill prompt lengths).")
@click.option("--past", "pasts", default="0,128,512", show_default=True,
              help="A decoder: past lengths to time one decode step at (those its context holds).")
@click.option("--exporter", default="dynamo", show_default=True, type=click.Choice(["dynamo", "torchscript"]),
              help="dynamo falls back to torchscript when it fails.")
@click.option("--runs", default=50, show_default=True, type=int,
              help="Benchmark: timing rounds per backend (at least).")
@click.option("--threads", default=2, show_default=True, type=int,
              help="Benchmark: CPU threads for PyTorch and ONNX Runtime (fewer than the cores on a busy machine).")
@click.option("--flush-denormals/--no-flush-denormals", default=True, show_default=True,
              help="Benchmark: ONNX Runtime CPU flushes denormals to zero (parity always keeps exact numerics).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
@verbosity_options
@click.pass_context
def run(ctx: click.Context, model: str, out: str, task: str | None, target: str | None, precision: str,
        tensorrt_version: str | None, calibration: str | None, batches: str, seqs: str, pasts: str, exporter: str, runs: int,
        threads: int, flush_denormals: bool, as_json: bool) -> None:
    """The whole job: export, optimize, quantize, build (with TensorRT), check parity and benchmark, into one folder.

    MODEL defaults to the bundled real all-MiniLM-L6-v2. Stages whose inputs are unchanged are skipped on
    a re-run; the first failing stage stops the run and says why. A causal LM runs with its KV cache: each
    artifact a runtime folder, parity over generations, latency at prefill and at decode per past length.

    \b
    Example:
      attnopt run --out out/
      attnopt run gpt2-tiny --out out-gpt2 --target onnx --batch 1,8 --seq 32,128
      attnopt run --out out-int8 --precision int8 --calibration sentences.txt
      attnopt run smollm2 --out out-smollm2 --seq 128 --past 0,128,512
    """
    from attnopt.usecases import run as run_usecase

    result = run_usecase.run(model, out, task=task, target=target, precision=precision, calibration=calibration,
                             batches=int_list(batches), seqs=int_list(seqs), pasts=int_list(pasts),
                             exporter=exporter, runs=runs, threads=threads, flush_denormals=flush_denormals,
                             tensorrt_version=tensorrt_version, progress=progress_for(ctx))
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=str))
    progress = progress_for(ctx)
    for stage in result.stages:
        progress.info(f"{stage.name:>8}: {stage.status} {stage.detail}".rstrip())
    for line in run_usecase.latency_sentences(result.report.get("latency")):
        progress.info(line)
    progress.info(f"wrote {result.out / 'report.md'} and {result.out / 'report.json'}")
    if not result.ok:
        failed = next(s for s in result.stages if s.status == "failed")
        click.echo(f"error: stage {failed.name} failed: {failed.detail}", err=True)
        ctx.exit(EXIT_PARITY)
