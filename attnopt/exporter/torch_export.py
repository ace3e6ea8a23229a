"""torch -> ONNX with either exporter; dynamic batch and sequence axes named after the model's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnopt.models.loaded import LoadedModel

#: write external data above this (protobuf's hard limit is 2 GiB; leave room for the graph)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def data_file_name(path: Path) -> str:
    return f"{path.name}.data"


def export_dynamo(loaded: LoadedModel, args: tuple, path: Path, opset: int, dynamic: bool, external: bool) -> None:
    import torch

    shapes = None
    if dynamic:
        dims = [{axis: torch.export.Dim.DYNAMIC for axis in s.dynamic_axes} for s in loaded.inputs]
        if loaded.cache is not None:
            # forward(input_ids, attention_mask, position_ids, *past): the past is one var-positional tuple
            shapes = (*dims[:3], tuple(dims[3:]))
        else:
            shapes = {"args": tuple(dims)}
    program = torch.onnx.export(
        loaded.module, args, dynamo=True, dynamic_shapes=shapes, opset_version=opset,
        input_names=loaded.input_names, output_names=loaded.output_names, verbose=False,
    )
    if dynamic:
        _rename_symbols(program.model, loaded)
    program.save(str(path), external_data=external)


def _rename_symbols(model: Any, loaded: LoadedModel) -> None:
    """torch.export calls dynamic dims s0, s1, ...; give them the names the inputs declare."""
    import onnx_ir as ir

    renames: dict[str, str] = {}
    for value, spec in zip(model.graph.inputs, loaded.inputs):
        for axis, name in spec.dynamic_axes.items():
            dim = value.shape[axis] if value.shape is not None else None
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                renames.setdefault(dim.value, name)

    def rename(value: Any) -> None:
        if value.shape is None:
            return
        dims = [ir.SymbolicDim(renames[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in renames else d
                for d in value.shape]
        # outputs whose axes the source names: a present's length is past + seq, which torch writes as a sum
        for axis, name in loaded.output_axes.get(value.name, {}).items():
            if axis < len(dims) and not isinstance(dims[axis], int):
                dims[axis] = ir.SymbolicDim(name)
        value.shape = ir.Shape(dims)

    for value in model.graph.inputs:
        rename(value)
    for value in model.graph.outputs:
        rename(value)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            rename(value)


def export_torchscript(loaded: LoadedModel, args: tuple, path: Path, opset: int, dynamic: bool,
                       external: bool) -> None:
    import torch

    axes = None
    if dynamic:
        axes = {s.name: dict(s.dynamic_axes) for s in loaded.inputs if s.dynamic_axes}
        axes.update({name: dict(a) for name, a in loaded.output_axes.items()})
    torch.onnx.export(
        loaded.module, args, str(path), dynamo=False, opset_version=opset,
        input_names=loaded.input_names, output_names=loaded.output_names, dynamic_axes=axes,
    )
    _keep_torchscript_file(path, external)


def _keep_torchscript_file(path: Path, external: bool) -> None:
    """What the TorchScript exporter wrote, as attnopt keeps it: a tied embedding stored once (the exporter
    folds the tie into a second, transposed copy: tied_weights) and large weights in one data file (it
    scatters them over one file each)."""
    import onnx_ir as ir

    from attnopt.passes.tied_weights import share_transposed_copies

    model = ir.load(path)
    scattered = {value.const_value.location for value in model.graph.initializers.values()
                 if isinstance(value.const_value, ir.ExternalTensor)}
    external = external or bool(scattered)  # the exporter went over 2 GB (a tied copy can take it there)
    if not share_transposed_copies(model) and not external:
        return
    ir.save(model, path, external_data=data_file_name(path) if external else None)
    del model  # its tensors map the scattered files
    for name in scattered - {data_file_name(path)}:
        (path.parent / name).unlink(missing_ok=True)
