"""For other projects' test suites: assert that artifacts match their PyTorch original.

    from attnopt.testing import assert_parity
    assert_parity("minilm", ["minilm.onnx"])

or, with `pytest_plugins = ["attnopt.testing"]` in a conftest.py, the `attnopt_parity` fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attnopt.parity.check import CheckResult, check


class ParityAssertionError(AssertionError):
    def __init__(self, result: CheckResult):
        lines = [f"{Path(c.artifact).name} [{c.precision}] inputs {c.inputs}, output {c.metrics.name}: "
                 f"{c.metrics.reason}" for c in result.failures]
        super().__init__("parity failed:\n  " + "\n  ".join(lines))
        self.result = result


def assert_parity(model: Any, artifacts: list[str | Path] | str | Path, **options: Any) -> CheckResult:
    """Run `attnopt.check` and raise ParityAssertionError (an AssertionError) naming every failing
    artifact, input set and output. Options are those of `attnopt.check`."""
    if isinstance(artifacts, (str, Path)):
        artifacts = [artifacts]
    result = check(model, list(artifacts), **options)
    if not result.passed:
        raise ParityAssertionError(result)
    return result


@pytest.fixture
def attnopt_parity():
    """The assert_parity function, as a fixture."""
    return assert_parity
