from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

TINY_PRESETS = ["bert-tiny", "minilm", "gpt2-tiny", "llama-tiny", "vit-tiny"]


def cuda_provider() -> bool:
    """A CUDA GPU that both PyTorch and ONNX Runtime (onnxruntime-gpu) can use."""
    try:
        import onnxruntime
        import torch
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available()


#: the marks of a test module that needs a CUDA GPU: marked, and skipped with the reason elsewhere
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not cuda_provider(), reason="needs a CUDA GPU and onnxruntime-gpu")]


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory):
    """Exports each (preset, exporter, task) once per session; tests must not modify the files."""
    import attnopt

    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str, str], object] = {}

    def get(preset: str, exporter: str = "dynamo", task: str = "feature-extraction"):
        key = (preset, exporter, task)
        if key not in cache:
            out = folder / f"{preset}-{exporter}-{task}.onnx"
            cache[key] = attnopt.export(preset, out, exporter=exporter, task=task)
        return cache[key]

    return get


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"
