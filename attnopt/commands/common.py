"""What every command shares: verbosity options and the progress display."""

from __future__ import annotations

from typing import Any

import click


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


def progress_for(ctx: click.Context) -> Any:
    from attnopt.console import Progress

    return Progress(ctx.obj["verbosity"])


def quiet_libraries() -> None:
    """torch and transformers log warnings that say nothing to an attnopt user."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: give integers separated by commas, e.g. 1,8,32") from exc
