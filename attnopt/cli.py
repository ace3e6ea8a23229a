"""The `attnopt` command line. Commands parse options, call the API and print; no logic of their own.
They live in attnopt.commands, one family a module, and import heavy packages only when they run, so that
`attnopt --help` is instant."""

from __future__ import annotations

import sys
from typing import Any

import click

from attnopt import __version__
from attnopt.commands import check as check_commands
from attnopt.commands import export as export_commands
from attnopt.commands import generate as generate_commands
from attnopt.commands import optimize as optimize_commands
from attnopt.commands import quantize as quantize_commands
from attnopt.commands import run as run_commands
from attnopt.commands import tensorrt as tensorrt_commands
from attnopt.commands.common import quiet_libraries
from attnopt.errors import AttnoptError, EXIT_USAGE, first_line


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
            first = first_line(exc)
            click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_USAGE)


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
        quiet_libraries()


for command in (export_commands.models, export_commands.export, optimize_commands.optimize, quantize_commands.quantize,
                check_commands.check,
                tensorrt_commands.doctor, tensorrt_commands.build, tensorrt_commands.inspect, run_commands.bench,
                run_commands.run, generate_commands.generate):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="attnopt")


if __name__ == "__main__":
    sys.exit(main())
