"""attnopt generate."""

from __future__ import annotations

import json

import click

from attnopt.commands.common import verbosity_options


@click.command()
@click.argument("source", metavar="MODEL|FOLDER")
@click.option("--prompt", required=True, help="The text to continue (through the chat template where there is one).")
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "ort", "genai", "torch"]),
              help="auto: ONNX Runtime for an exported folder, PyTorch for a MODEL; genai: onnxruntime-genai.")
@click.option("--chat/--no-chat", default=True, show_default=True, help="Use the tokenizer's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of streaming.")
@verbosity_options
@click.pass_context
def generate(ctx: click.Context, source: str, prompt: str, max_new_tokens: int, backend: str, chat: bool,
             as_json: bool) -> None:
    """Generate text greedily from an exported decoder FOLDER (or a MODEL), streaming it.

    \b
    Example:
      attnopt export smollm2 -o smollm2/model.onnx
      attnopt generate smollm2/ --prompt "What is the capital of France?"
      attnopt generate smollm2/ --prompt "What is the capital of France?" --backend genai
      attnopt generate smollm2 --prompt "Name three colors." --backend torch
    """
    from attnopt.generation.generate import generate as run_generate

    def stream(text: str) -> None:
        click.echo(text, nl=False)

    result = run_generate(source, prompt, max_new_tokens=max_new_tokens, backend=backend, chat=chat,
                          on_text=None if as_json else stream)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo()
    if ctx.obj["verbosity"] > 0:
        click.echo(f"[{result.backend}: {result.prompt_tokens} prompt tokens, {len(result.tokens)} new; time to first "
                   f"token {result.time_to_first_token_s * 1000:.0f} ms, {result.tokens_per_s:.1f} tokens/s]", err=True)
