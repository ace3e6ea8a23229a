"""Tier 4: random attention blocks written the ways people write them, through either exporter,
must fuse fully on every target and match PyTorch."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import attnopt
from attnopt.runtime import OrtRunner


class RandomAttention(torch.nn.Module):
    """Self- or cross-attention with the scale, mask and head split chosen by the test."""

    def __init__(self, heads: int, kv_heads: int, size: int, scale_at: str, mask: str, sdpa: bool, cross: bool):
        super().__init__()
        torch.manual_seed(heads * 100 + size)
        hidden = heads * size
        self.heads, self.kv_heads, self.size = heads, kv_heads, size
        self.scale_at, self.mask, self.sdpa, self.cross = scale_at, mask, sdpa, cross
        self.q = torch.nn.Linear(hidden, hidden)
        self.k = torch.nn.Linear(hidden, kv_heads * size)
        self.v = torch.nn.Linear(hidden, kv_heads * size)
        self.o = torch.nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, heads, self.size).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        source = memory if self.cross else x
        q = self.split(self.q(x), self.heads)
        k = self.split(self.k(source), self.kv_heads)
        v = self.split(self.v(source), self.kv_heads)
        rep = self.heads // self.kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1) if self.scale_at == "q" else k[:, :, None].expand(
                -1, -1, rep, -1, -1).reshape(k.shape[0], self.heads, k.shape[2], self.size)
            v = v.repeat_interleave(rep, dim=1) if self.scale_at == "q" else v[:, :, None].expand(
                -1, -1, rep, -1, -1).reshape(v.shape[0], self.heads, v.shape[2], self.size)
        mask = keep[:, None, None, :].bool()  # (B, 1, 1, Sk)
        if self.sdpa:
            attn_mask = mask if self.mask != "none" else None
            if self.mask == "float":
                attn_mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            scale = 1.0 / math.sqrt(self.size)
            if self.scale_at == "q":
                scores = (q * scale) @ k.transpose(-1, -2)
            elif self.scale_at == "both":
                scores = (q * math.sqrt(scale)) @ (k.transpose(-1, -2) * math.sqrt(scale))
            else:
                scores = q @ k.transpose(-1, -2) / math.sqrt(self.size)
            if self.mask == "float":
                scores = scores + (1.0 - mask.float()) * torch.finfo(scores.dtype).min
            elif self.mask == "bool":
                scores = scores.masked_fill(~mask, float("-inf"))
            out = scores.softmax(dim=-1) @ v
        b, _, s, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(b, s, self.heads * self.size))


configs = st.fixed_dictionaries({
    "heads": st.sampled_from([2, 4]),
    "kv_div": st.sampled_from([1, 2]),
    "size": st.sampled_from([8, 16]),
    "scale_at": st.sampled_from(["scores", "q", "both"]),
    "mask": st.sampled_from(["none", "float", "bool"]),
    "sdpa": st.booleans(),
    "cross": st.booleans(),
    "exporter": st.sampled_from(["dynamo", "torchscript"]),
})


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(config=configs)
def test_random_attention_fuses_and_matches(tmp_path_factory, config: dict) -> None:
    folder = tmp_path_factory.mktemp("prop")
    heads = config["heads"]
    module = RandomAttention(heads, heads // config["kv_div"], config["size"], config["scale_at"], config["mask"],
                             config["sdpa"], config["cross"]).eval()
    hidden = heads * config["size"]
    x, memory = torch.randn(2, 7, hidden), torch.randn(2, 9, hidden)
    keys = 9 if config["cross"] else 7  # the key padding mask covers the keys' sequence
    keep = torch.ones(2, keys, dtype=torch.int64)
    keep[1, keys - 3:] = 0
    factory = folder / "model.py"
    torch.save({"module": module, "inputs": (x, memory, keep)}, folder / "model.pt")
    factory.write_text(
        "import torch\n"
        f"def build():\n    d = torch.load({str(folder / 'model.pt')!r}, weights_only=False)\n"
        f"    axes = {{'input_0': {{0: 'batch', 1: 'seq'}}, 'input_1': {{0: 'batch', 1: 'mem'}}, 'input_2': {{0: 'batch', 1: {'mem' if config['cross'] else 'seq'!r}}}}}\n"
        "    return d['module'], d['inputs'], axes\n"
    )
    exported = attnopt.export(f"{factory}:build", folder / "m.onnx", exporter=config["exporter"], verify=False)
    for target in ("ort", "onnx", "trt"):
        out = folder / f"m.{target}.onnx"
        report = attnopt.optimize(exported.path, out, target=target).report
        att = report["fusions"]["attention"]
        assert (att["sites"], att["fused"], att["unfused"]) == (1, 1, []), (config, target, att)
        feed = {"input_0": np.random.default_rng(1).standard_normal((3, 5, hidden)).astype(np.float32),
                "input_1": np.random.default_rng(2).standard_normal((3, 11, hidden)).astype(np.float32),
                "input_2": np.array([[1] * 11, [1] * 7 + [0] * 4, [1] * 3 + [0] * 8], dtype=np.int64)}
        if not config["cross"]:
            feed["input_2"] = feed["input_2"][:, :5]
        with OrtRunner(out) as runner:
            names = runner.input_names
            got = runner.infer({k: v for k, v in feed.items() if k in names})["output_0"]
        with torch.no_grad():
            want = module(*(torch.from_numpy(feed[k]) for k in ("input_0", "input_1", "input_2"))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3, err_msg=f"{config} {target}")
