"""A model attnopt has no preset for: `attnopt export examples/custom_model.py:build -o custom.onnx`."""

import torch


class TinyEncoder(torch.nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + out)


def build():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 32)
    # axis 0 is the batch, axis 1 the sequence; both stay dynamic in the export
    return TinyEncoder().eval(), {"x": x}, {"x": {0: "batch", 1: "seq"}}
