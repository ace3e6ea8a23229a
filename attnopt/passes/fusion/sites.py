"""Sites: one per place a recogniser looked at, followed from recognition through lowering to the
output graph, so the coverage report says what really happened to each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import onnx_ir as ir

#: the fusion kinds, in the order the report lists them
FUSION_KINDS = ("attention", "layernorm", "gelu", "rmsnorm", "rotary")


class Reject(Exception):
    """Raised by a matcher or a lowering's veto: the site is not this computation, not provably so, or
    the target cannot take it; the message says why."""


@dataclass
class Site:
    kind: str
    #: the node the recogniser started from, named as in the cleaned-up input graph: stable from one
    #: run of the passes to the next, which is what lets verification roll back one site
    anchor: str
    already_fused: bool = False
    #: what the site became on the target (empty until lowered)
    form: str = ""
    #: the node in the output graph that is the fused op, and its op type: checked at the end
    fused_node: str = ""
    fused_op: str = ""
    reason: str = ""  # why it is not fused (empty when it is)

    @property
    def fused(self) -> bool:
        return bool(self.fused_node) and not self.reason

    def reject(self, reason: str) -> None:
        self.reason = reason
        self.fused_node = self.fused_op = ""

    def lowered(self, form: str, node: ir.Node) -> None:
        self.form, self.fused_node, self.fused_op = form, node.name, node.op_type


@dataclass
class FusionOutcome:
    """The report of one fusion kind: sites found, fused (the target's fused op is in the output
    graph), what they became, and the reason for every site left unfused."""

    kind: str
    sites: int = 0
    fused: int = 0
    already_fused: int = 0
    forms: dict[str, int] = field(default_factory=dict)
    unfused: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, kind: str, sites: Iterable[Site]) -> FusionOutcome:
        outcome = cls(kind)
        for site in (s for s in sites if s.kind == kind):
            outcome.sites += 1
            outcome.already_fused += site.already_fused
            if site.fused:
                outcome.fused += 1
                outcome.forms[site.form] = outcome.forms.get(site.form, 0) + 1
            else:
                outcome.unfused.append({"node": site.anchor, "reason": site.reason or "not lowered"})
        return outcome

    def to_dict(self) -> dict:
        return {"sites": self.sites, "fused": self.fused, "already_fused": self.already_fused,
                "forms": dict(sorted(self.forms.items())),
                "unfused": sorted(self.unfused, key=lambda u: u["node"])}


def confirm_in_graph(graph: ir.Graph, sites: Iterable[Site]) -> None:
    """A site counts as fused only when its fused op is in the output graph: whatever happened after
    lowering (a cleanup, a rollback), the report must agree with the graph site for site."""
    present = {node.name: node.op_type for node in graph}
    for site in sites:
        if site.fused and present.get(site.fused_node) != site.fused_op:
            site.reject(f"lowered to {site.form}, but its {site.fused_op} node is not in the output graph")
