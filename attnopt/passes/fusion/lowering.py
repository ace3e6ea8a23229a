"""Lower every canonical attnopt op in a model for one target."""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from attnopt.passes.graph_utils import ATTNOPT_DOMAIN
from attnopt.passes.lower import onnx as onnx_target
from attnopt.passes.lower import ort as ort_target
from attnopt.passes.lower import trt as trt_target

TARGETS = ("onnx", "ort", "trt")

_ATTENTION: dict[str, Callable[[ir.Model, ir.Node], str]] = {
    "onnx": onnx_target.lower_attention,
    "ort": ort_target.lower_attention,
    "trt": trt_target.lower_attention,
}


def lower_attention(model: ir.Model, target: str) -> dict[str, int]:
    """Returns how many attention ops became each form."""
    forms: dict[str, int] = {}
    for node in [n for n in model.graph if n.domain == ATTNOPT_DOMAIN and n.op_type == "Attention"]:
        form = _ATTENTION[target](model, node)
        forms[form] = forms.get(form, 0) + 1
    return forms
