"""Errors a user can cause. The CLI prints them as one line and maps them to exit codes."""

from __future__ import annotations

#: exit codes shared by every command
EXIT_OK = 0
EXIT_PARITY = 1  # a result outside tolerance
EXIT_USAGE = 2  # bad input: path, spec, option, missing dependency


class AttnoptError(Exception):
    """An error with a message that says what is wrong and a hint that says what to do."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelSourceError(AttnoptError):
    """MODEL could not be resolved or loaded."""


class UnsupportedTaskError(AttnoptError):
    """The model cannot do the requested task."""


class OutputError(AttnoptError):
    """The output path exists, or its folder cannot be written."""


class ExportError(AttnoptError):
    """Both exporters failed on the model."""


class MissingDependencyError(AttnoptError):
    """An optional package (onnxruntime, TensorRT, ...) is not installed."""


class ParityError(AttnoptError):
    """An artifact's outputs left tolerance against the reference."""

    exit_code = EXIT_PARITY


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message; '' for an empty one (str(exc).splitlines()[0]
    raises IndexError there)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""
