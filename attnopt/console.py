"""Progress and messages on stderr (stdout is kept for results and --json)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

QUIET, NORMAL, VERBOSE = 0, 1, 2


class Progress:
    """Shows a spinner per long step and a line when it ends; silent when quiet."""

    def __init__(self, verbosity: int = NORMAL, console: Console | None = None):
        self.verbosity = verbosity
        self.console = console or Console(stderr=True, highlight=False)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        if self.verbosity == QUIET:
            yield
            return
        start = time.perf_counter()
        with self.console.status(message):
            yield
        self.console.print(f"[green]✓[/] {message} ({time.perf_counter() - start:.1f}s)")

    def info(self, message: str) -> None:
        if self.verbosity >= NORMAL:
            self.console.print(message)

    def warn(self, message: str) -> None:
        if self.verbosity >= NORMAL:
            self.console.print(f"[yellow]warning:[/] {message}")

    def debug(self, message: str) -> None:
        if self.verbosity >= VERBOSE:
            self.console.print(f"[dim]{message}[/]")


SILENT = Progress(QUIET)
