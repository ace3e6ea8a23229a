"""attnopt check."""

from __future__ import annotations

from pathlib import Path

import click

from attnopt.commands.common import progress_for, verbosity_options
from attnopt.errors import EXIT_PARITY


@click.command()
@click.argument("model")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--task", type=click.Choice(["feature-extraction", "sequence-classification", "causal-lm"]),
              help="[default: the task the model's config names; decoders with a KV cache: causal-lm]")
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
def check(ctx: click.Context, model: str, artifacts: tuple[str, ...], task: str | None, shapes: str | None,
          inputs_file: str | None, seed: int, atol: float | None, rtol: float | None, cosine: float | None,
          top1: float | None, config: str | None, json_path: str | None, junit_path: str | None,
          bisect: bool, device: str) -> None:
    """Check that each ARTIFACT matches the PyTorch MODEL (exit 0), or not (exit 1).

    A decoder exported with a KV cache is checked over whole generations: prefill with an empty past,
    decode steps, chunked prefill, a left-padded batch, then greedy tokens against Hugging Face generate.

    Tolerances follow each artifact's precision (fp32: atol 1e-4, rtol 1e-3; fp16: atol 1e-2 and
    cosine >= 0.9999; int8: cosine >= 0.99 and top-1 >= 99%), overridable in a config file and here.

    \b
    Example:
      attnopt check minilm minilm.onnx minilm.ort.onnx --junit-xml parity.xml
      attnopt check smollm2 smollm2/model.onnx
    """
    import attnopt
    from attnopt.parity import report
    from attnopt.parity.inputs import parse_shapes

    result = attnopt.check(model, list(artifacts), task=task, shapes=parse_shapes(shapes) if shapes else None,
                           inputs=inputs_file, seed=seed, config=config, bisect=bisect, device=device,
                           progress=progress_for(ctx),
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
    progress_for(ctx).info(f"all {len(result.cases)} checks passed in {result.seconds:.1f}s")
