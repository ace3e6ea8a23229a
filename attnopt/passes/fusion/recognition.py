"""What a recogniser works with: the model, the sites found so far, and the one question it may ask
of the target, "can you take this canonical op?", so that recognisers never branch on a target name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import onnx_ir as ir

from attnopt.passes.fusion.sites import Reject, Site
from attnopt.passes.graph_utils import ATTNOPT_DOMAIN, default_opset, new_node

#: a target's veto: (canonical op type, its attributes, the model, its inputs) -> why not, or "" to accept
Veto = Callable[[str, dict[str, Any], ir.Model, Sequence[ir.Value | None]], str]

#: where a site's record travels with the canonical node until it is lowered
SITE_KEY = "attnopt.site"


@dataclass
class Recognition:
    model: ir.Model
    veto: Veto
    sites: list[Site] = field(default_factory=list)
    #: anchors of sites verification rolled back in an earlier run, with the reason
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def graph(self) -> ir.Graph:
        return self.model.graph

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    def each(self, kind: str, anchors: Iterable[ir.Node], recognise: Callable[[Site, ir.Node], None],
             already_fused: bool = False) -> None:
        """One site per anchor (the node a recogniser starts from): `recognise` rewrites it into the
        canonical op or raises Reject, and the site keeps the reason."""
        for anchor in list(anchors):
            if anchor.graph is None:
                continue  # removed as part of an earlier site
            site = Site(kind, anchor.name or anchor.op_type, already_fused)
            self.sites.append(site)
            try:
                if site.anchor in self.excluded:
                    raise Reject(f"rolled back: {self.excluded[site.anchor]}")
                recognise(site, anchor)
            except Reject as why:
                site.reject(str(why))

    def accept(self, op_type: str, attributes: dict[str, Any], inputs: Sequence[ir.Value | None]) -> None:
        """Raises Reject with the target's reason when it cannot take this canonical op."""
        reason = self.veto(op_type, attributes, self.model, inputs)
        if reason:
            raise Reject(reason)

    def emit(self, site: Site, before: ir.Node, op_type: str, inputs: Sequence[ir.Value | None],
             attributes: dict[str, Any], name: str, num_outputs: int = 1) -> ir.Node:
        """The canonical attnopt op for `site`, inserted before `before`, once the target accepts it."""
        self.accept(op_type, attributes, inputs)
        node = new_node(self.graph, before, op_type, inputs, attributes, domain=ATTNOPT_DOMAIN, name=name,
                        num_outputs=num_outputs)
        node.meta[SITE_KEY] = site
        return node

    def adopt(self, site: Site, node: ir.Node, op_type: str, attributes: dict[str, Any]) -> None:
        """A fused op the model already has (ONNX Attention, LayerNormalization, Gelu) becomes the
        canonical op in place, so that every target lowers it like a recognised site."""
        self.accept(op_type, attributes, list(node.inputs))
        node.domain, node.op_type = ATTNOPT_DOMAIN, op_type
        node.attributes.clear()
        for key, value in attributes.items():
            node.attributes[key] = ir.convenience.convert_attribute(key, value)
        node.meta[SITE_KEY] = site
