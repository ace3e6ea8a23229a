"""`attnopt build`: ONNX -> TensorRT engine, through TensorRT's documented Python API (10.x and 11.x).

Runs doctor against the operator table of the TensorRT at hand first. The network is strongly typed: the
precision is what the graph's Casts and Q/DQ pairs say (TensorRT 11 builds nothing else). On TensorRT 10,
`precision` fp16/int8 on an fp32 graph takes the older builder-flag path instead (engine.precision_route);
the calls that differ between the two lines live in engine.trt_api."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnopt.artifacts import check_output, staged
from attnopt.console import SILENT, Progress
from attnopt.engine.doctor import doctor, graph_inputs
from attnopt.engine.environment import require_cuda_gpu, require_tensorrt, tensorrt_major
from attnopt.engine.optable import OperatorTable, select_table
from attnopt.engine.precision_route import PRECISIONS, builder_precision
from attnopt.engine.profiles import InputProfile, default_profiles, validate_profiles
from attnopt.engine.sidecar import engine_record, engine_sidecar_path, write_engine_sidecar
from attnopt.engine.trt_api import network_creation_flags, weak_precision_flag
from attnopt.errors import EXIT_PARITY, AttnoptError
from attnopt.exporter.sidecar import read_sidecar

__all__ = ["PRECISIONS", "BuildResult", "BuildWouldFail", "build", "resolve_profiles"]


class BuildWouldFail(AttnoptError):
    """doctor found what TensorRT would reject: the model's fault, not the command line's (exit 1)."""

    exit_code = EXIT_PARITY


@dataclass
class BuildResult:
    engine: Path
    sidecar: Path
    record: dict[str, Any]
    warnings: list[str]


def resolve_profiles(onnx_path: Path, profiles: dict[str, InputProfile] | None) -> dict[str, InputProfile]:
    import onnx

    inputs = graph_inputs(onnx.load(str(onnx_path), load_external_data=False))
    if profiles is None:
        side = read_sidecar(onnx_path) or {}
        profiles = default_profiles(inputs, side.get("example_shape"))
    validate_profiles(profiles, inputs)
    return profiles


def _network(trt: Any, builder: Any, logger: Any, onnx_path: Path, flags: int) -> Any:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the model
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildWouldFail(f"TensorRT's ONNX parser rejected {onnx_path}: {errors[0] if errors else 'unknown error'}",
                             f"run attnopt doctor {onnx_path} --target trt")
    return network


def _graph_precision(source: Path) -> str:
    import onnx

    from attnopt.parity.artifacts import precision_of

    return precision_of(onnx.load(str(source), load_external_data=False), read_sidecar(source))


def _doctor_first(source: Path, profiles: dict[str, InputProfile], table: OperatorTable) -> None:
    report = doctor(source, profiles, table=table)
    if not report.ok:
        first = report.errors[0]
        raise BuildWouldFail(f"TensorRT {table.version} would fail on {source}: {first.node}: {first.message} "
                             f"({len(report.errors)} problem(s); see attnopt doctor)", first.fix)


def _progress_monitor(trt: Any, progress: Progress) -> Any | None:
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):  # noqa: ANN001 - TensorRT's signature
            progress.debug(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):  # noqa: ANN001
            return True  # keep building

        def phase_finish(self, phase_name):  # noqa: ANN001
            pass

    return Monitor()


def build(onnx_path: str | Path, output: str | Path, *, profiles: dict[str, InputProfile] | None = None,
          precision: str = "graph", optimization_level: int = 3, workspace_gb: float = 4.0,
          timing_cache: str | Path | None = None, force: bool = False, tensorrt_version: str | None = None,
          progress: Progress = SILENT) -> BuildResult:
    source, engine_path = Path(onnx_path), Path(output)
    if precision not in PRECISIONS:
        raise AttnoptError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    check_output(engine_path, force, inputs=(source,))
    table = select_table(tensorrt_version)  # the installed TensorRT's; a request of another line fails here
    route = builder_precision(precision, _graph_precision(source), table, source)
    profiles = resolve_profiles(source, profiles)
    _doctor_first(source, profiles, table)
    trt = require_tensorrt()
    gpu = require_cuda_gpu()
    major = tensorrt_major(trt)
    strongly_typed = route == "graph"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with progress.step(f"Parsing {source.name} into a {'strongly typed ' if strongly_typed else ''}network"):
        network = _network(trt, builder, logger, source, network_creation_flags(trt, major, strongly_typed))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for attnopt inspect
    if not strongly_typed:
        config.set_flag(weak_precision_flag(trt, major, route))
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    with progress.step(f"Building the engine (optimization level {optimization_level})"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildWouldFail(f"TensorRT could not build an engine from {source}", "run with --verbose for its log")
    record = engine_record(source, str(trt.__version__), gpu, {n: p.to_dict() for n, p in profiles.items()},
                           route, strongly_typed, table.describe())
    with staged(engine_path) as stage:
        (stage / engine_path.name).write_bytes(bytes(serialized))
        write_engine_sidecar(stage / engine_sidecar_path(engine_path).name, record)
    if cache_path is not None:
        tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    from attnopt.engine.inspect import attention_fusion_warnings

    warnings = attention_fusion_warnings(engine_path)
    for warning in warnings:
        progress.warn(warning)
    return BuildResult(engine_path, engine_sidecar_path(engine_path), record, warnings)
