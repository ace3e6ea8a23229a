"""`path/to/file.py:factory`: a function returning a torch.nn.Module and its example inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from attnopt.errors import ModelSourceError
from attnopt.models.loaded import InputSpec, LoadedModel

FACTORY_CONTRACT = (
    "the factory must return (module, inputs) or (module, inputs, dynamic_axes): inputs a tensor, "
    "a tuple of tensors or a dict name -> tensor; dynamic_axes a dict name -> {axis: 'batch'|'seq'|...}"
)


def is_factory_spec(spec: str) -> bool:
    path, sep, func = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and func.isidentifier()


def _call_factory(spec: str) -> Any:
    path_str, _, func_name = spec.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise ModelSourceError(f"{path_str}: no such file", "give the path of a .py file, then :function")
    name = f"_attnopt_factory_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    try:
        sys.modules[name] = module
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:
        raise ModelSourceError(f"{path_str} failed to import: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ModelSourceError(f"{path_str} has no function {func_name!r}", FACTORY_CONTRACT)
    try:
        return factory()
    except Exception as exc:
        raise ModelSourceError(f"factory {spec} raised {type(exc).__name__}: {exc}") from exc


def _normalise_inputs(raw: Any) -> tuple[dict[str, Any], bool]:
    """name -> tensor, and whether the module takes them by keyword."""
    import torch

    if isinstance(raw, torch.Tensor):
        raw = (raw,)
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return dict(raw), True
    if isinstance(raw, (tuple, list)) and raw and all(isinstance(v, torch.Tensor) for v in raw):
        return {f"input_{i}": t for i, t in enumerate(raw)}, False
    raise ModelSourceError(f"the factory's example inputs are {type(raw).__name__}", FACTORY_CONTRACT)


def load_factory(spec: str) -> LoadedModel:
    import torch

    from attnopt.models.wrappers import KeywordWrapper, PositionalWrapper, flatten_outputs

    result = _call_factory(spec)
    if not (isinstance(result, tuple) and len(result) in (2, 3) and isinstance(result[0], torch.nn.Module)):
        raise ModelSourceError(f"factory {spec} returned {type(result).__name__}", FACTORY_CONTRACT)
    module, raw_inputs = result[0].eval(), result[1]
    examples, by_keyword = _normalise_inputs(raw_inputs)
    axes: dict[str, dict[int, str]] = result[2] if len(result) == 3 else {}
    unknown = set(axes) - set(examples)
    if unknown:
        raise ModelSourceError(f"dynamic_axes names unknown inputs {sorted(unknown)}", FACTORY_CONTRACT)
    specs = []
    for name, tensor in examples.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        value_range = None
        if not tensor.dtype.is_floating_point and tensor.dtype != torch.bool and tensor.numel():
            value_range = (int(tensor.min()), int(tensor.max()))
        dyn = {int(a): n for a, n in axes.get(name, {0: "batch"} if tensor.dim() else {}).items()}
        specs.append(InputSpec(name, "tensor", dtype, tuple(tensor.shape), dyn, value_range))
    wrapper = KeywordWrapper(module, list(examples)) if by_keyword else PositionalWrapper(module)
    try:
        with torch.no_grad():
            outputs = flatten_outputs(wrapper(*examples.values()))
    except Exception as exc:
        raise ModelSourceError(f"the factory's module fails on its own example inputs: {type(exc).__name__}: {exc}") from exc
    if not outputs:
        raise ModelSourceError("the factory's module returned no tensors", FACTORY_CONTRACT)
    output_names = [f"output_{i}" for i in range(len(outputs))]
    source = {"kind": "factory", "spec": spec, "path": str(Path(spec.rpartition(":")[0]).resolve())}
    return LoadedModel(wrapper.eval(), specs, output_names, "custom", source)
