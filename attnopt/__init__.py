"""attnopt: Transformer models from PyTorch to fast, verified inference.

The public API is imported lazily so that `import attnopt` (and `attnopt --help`) stays instant."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "export": "attnopt.exporter",
    "optimize": "attnopt.usecases.optimize",
    "quantize": "attnopt.usecases.quantize",
    "check": "attnopt.parity.check",
    "bench": "attnopt.latency.bench",
    "load_model": "attnopt.models",
    "AttnoptError": "attnopt.errors",
    "Tolerance": "attnopt.parity.tolerance",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'attnopt' has no attribute {name!r}")
