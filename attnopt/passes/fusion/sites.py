"""What a fusion pass reports: sites found, fused, and why the rest were not."""

from __future__ import annotations

from dataclasses import dataclass, field


class Reject(Exception):
    """Raised by a matcher: the site is not this computation, or not provably so; the message says why."""


@dataclass
class FusionOutcome:
    kind: str
    sites: int = 0
    fused: int = 0
    unfused: list[dict[str, str]] = field(default_factory=list)
    #: sites that were already a fused op when they came in (e.g. ONNX Attention at opset 23)
    already_fused: int = 0
    #: what the fused sites became on the target, e.g. {"MultiHeadAttention": 12}
    forms: dict[str, int] = field(default_factory=dict)

    def reject(self, node_name: str, reason: str) -> None:
        self.unfused.append({"node": node_name, "reason": reason})

    def to_dict(self) -> dict:
        return {"sites": self.sites, "fused": self.fused, "already_fused": self.already_fused,
                "forms": dict(sorted(self.forms.items())),
                "unfused": sorted(self.unfused, key=lambda u: u["node"])}
