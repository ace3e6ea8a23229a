"""model.engine.json: what an engine was built from, with which TensorRT, for which GPU. An engine
only runs on the TensorRT version and GPU architecture it was built for; loading checks both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnopt.digest import content_digest
from attnopt.errors import AttnoptError


def engine_sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def engine_record(onnx_path: Path, tensorrt: str, gpu: dict[str, Any], profiles: dict[str, Any],
                  precision: str, strongly_typed: bool, operator_table: dict[str, Any] | None = None) -> dict[str, Any]:
    """precision: 'graph' (strongly typed) or the TensorRT 10 builder flag used; operator_table: the
    OperatorTable.describe() of the table doctor checked the model against."""
    return {"format": "attnopt.engine/1", "onnx": str(onnx_path), "onnx_sha256": content_digest(onnx_path),
            "tensorrt": tensorrt, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "profiles": profiles, "precision": precision, "strongly_typed": strongly_typed,
            "operator_table": operator_table}


def write_engine_sidecar(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_engine_sidecar(engine: Path) -> dict[str, Any]:
    path = engine_sidecar_path(engine)
    if not path.is_file():
        raise AttnoptError(f"{engine} has no sidecar {path.name}", "rebuild it with attnopt build")
    return json.loads(path.read_text())


def check_compatible(record: dict[str, Any], tensorrt: str, gpu: dict[str, Any]) -> None:
    """An engine built with another TensorRT, or for another GPU architecture, cannot be deserialized."""
    rebuild = f"rebuild it here: attnopt build {record.get('onnx', 'model.onnx')} -o ENGINE"
    if record.get("tensorrt") != tensorrt:
        raise AttnoptError(f"the engine was built with TensorRT {record.get('tensorrt')}, this machine has "
                           f"TensorRT {tensorrt}", rebuild)
    if record.get("compute_capability") != gpu["compute_capability"]:
        raise AttnoptError(f"the engine was built for {record.get('gpu')} (compute capability "
                           f"{record.get('compute_capability')}), this GPU is {gpu['name']} "
                           f"({gpu['compute_capability']})", rebuild)
