"""`attnopt doctor --target trt`: would TensorRT build this model? Checked statically, without TensorRT:
opset, ops and their restrictions against the parser's published table for the chosen TensorRT (see
engine.optable.select_table), dtypes, contrib ops, dynamic axes against the optimization profiles, and
attention in the form TensorRT's fused multi-head attention recognises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from attnopt.engine.op_restrictions import violations
from attnopt.engine.optable import OperatorTable, known_versions, load_table, parse_version, select_table
from attnopt.engine.profiles import InputProfile, validate_profiles
from attnopt.errors import AttnoptError
from attnopt.exporter.sidecar import graph_input_dims


@dataclass
class Problem:
    severity: str  # error (the build would fail) | warning (it builds, but slower than it could)
    node: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "node": self.node, "message": self.message, "fix": self.fix}


@dataclass
class DoctorReport:
    model: str
    table: OperatorTable
    problems: list[Problem] = field(default_factory=list)

    @property
    def tensorrt(self) -> str:
        return self.table.version

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, node: str, message: str, fix: str) -> None:
        self.problems.append(Problem(severity, node, message, fix))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tensorrt": self.tensorrt, "operator_table": self.table.describe(),
                "ok": self.ok, "problems": [p.to_dict() for p in self.problems]}


def graph_inputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    return [{"name": name, "shape": dims} for name, dims in graph_input_dims(model).items()]


def _opset_fix(opset: int, table: OperatorTable) -> str:
    if opset < table.min_opset:
        return f"export with --opset {table.min_opset} or newer"
    return (f"re-run attnopt optimize on the export with --target trt --tensorrt-version {table.version} (it converts "
            f"the opset), or export with --opset {table.max_opset}")


def _unsupported_fix(op_type: str, table: OperatorTable) -> str:
    newer = [v for v in known_versions() if parse_version(v) > parse_version(table.version)
             and load_table(v).supports(op_type)]
    if newer:
        return (f"TensorRT {newer[0]} and newer import it (--tensorrt-version {newer[0]}); for {table.version}, re-run "
                f"attnopt optimize --target trt --tensorrt-version {table.version}, which writes it decomposed")
    return "rewrite the model without it"


def _check_ops(model: onnx.ModelProto, table: OperatorTable, report: DoctorReport) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not table.supports_opset(opset):
        report.add("error", "(model)", f"opset {opset} is outside TensorRT {table.version}'s range "
                   f"{table.min_opset}-{table.max_opset}", _opset_fix(opset, table))
    for node in model.graph.node:
        name = node.name or node.op_type
        if node.domain not in ("", "ai.onnx"):
            report.add("error", name, f"{node.domain}.{node.op_type} is an ONNX Runtime contrib op, not in TensorRT",
                       "optimize for TensorRT with --target trt")
        elif not table.supports(node.op_type, node.domain):
            known = "listed as unsupported" if node.op_type in table.unsupported else "not in the table"
            report.add("error", name, f"{node.op_type} is {known} for TensorRT {table.version}'s ONNX parser",
                       _unsupported_fix(node.op_type, table))
    for v in violations(model, table):
        report.add("error", v.node, v.message, v.fix)


def _check_types(model: onnx.ModelProto, table: OperatorTable, report: DoctorReport) -> None:
    values = [*model.graph.input, *model.graph.output]
    for value in values:
        name = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if name not in table.types:
            report.add("error", value.name, f"dtype {name} is not one TensorRT takes", "cast it at export")
        elif name == "DOUBLE":
            report.add("warning", value.name, "DOUBLE is cast down to FLOAT by TensorRT", "export in float32")


def _check_attention(path: Path, report: DoctorReport) -> None:
    """Each attention block must be in the fusable form: Q scaled before MatMul(Q, Kᵀ), Softmax on the
    last axis, MatMul(P, V), a static head count."""
    from attnopt.passes.fusion.attention_match import match_attention
    from attnopt.passes.fusion.sites import Reject
    from attnopt.passes.graph_utils import default_opset
    from attnopt.passes.shapes import static_dims

    model = ir.load(path)
    for softmax in [n for n in model.graph if n.op_type == "Softmax"]:
        name = softmax.name or "Softmax"
        try:
            match = match_attention(softmax, default_opset(model))
        except Reject as why:
            report.add("warning", name, f"a Softmax TensorRT will not fuse as attention ({why})",
                       "run attnopt optimize --target trt and see its coverage report")
            continue
        dims = static_dims(match.q) or []
        if len(dims) < 2 or not isinstance(dims[1], int):
            report.add("warning", name, "attention with a dynamic head count: TensorRT's fused MHA needs it static",
                       "export with static head counts (they are static in transformers models)")
        if abs(match.q_scale - match.scale) > 1e-6 * abs(match.scale):
            report.add("warning", name, "the attention scale is not applied to Q before MatMul(Q, Kᵀ)",
                       "run attnopt optimize --target trt, which writes the form TensorRT fuses")


def doctor(model_path: str | Path, profiles: dict[str, InputProfile] | None = None,
           tensorrt_version: str | None = None, table: OperatorTable | None = None) -> DoctorReport:
    """Everything that would stop TensorRT from building the model, against `table` (else
    select_table(tensorrt_version): the installed TensorRT's table, else the newest)."""
    table = table or select_table(tensorrt_version)
    path = Path(model_path)
    if not path.is_file():
        raise AttnoptError(f"{path}: no such file", "give the path of an .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise AttnoptError(f"{path} is not a readable ONNX model") from exc
    report = DoctorReport(str(path), table)
    _check_ops(model, table, report)
    _check_types(model, table, report)
    if profiles is not None:
        try:
            validate_profiles(profiles, graph_inputs(model))
        except AttnoptError as why:
            report.add("error", "(profiles)", why.message, why.hint or "fix --shapes")
    else:
        for spec in graph_inputs(model):
            dynamic = [i for i, d in enumerate(spec["shape"]) if not (isinstance(d, int) and d > 0)]
            if dynamic:
                report.add("error", spec["name"], f"dynamic axes {dynamic} are covered by no optimization profile",
                           f"give --shapes {spec['name']}:MIN,OPT,MAX (or keep the export's sidecar beside the model)")
    _check_attention(path, report)
    return report
