"""Tier 2, wider: tiny random-init configs of more real architectures, both exporters: every attention,
layernorm, GELU, RMSNorm and rotary site fused on the ort target, and the result matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T

import attnopt
from attnopt.models.huggingface import load_from_config
from attnopt.runtime import OrtRunner, TorchRunner

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)

#: name -> (config, sites per kind: attention, layernorm, gelu, rmsnorm, rotary)
ARCHITECTURES = {
    "roberta": (lambda: T.RobertaConfig(**SMALL), (2, 5, 2, 0, 0)),
    "distilbert": (lambda: T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000),
                   (2, 5, 2, 0, 0)),
    "mpnet": (lambda: T.MPNetConfig(**SMALL), (2, 5, 2, 0, 0)),
    # disentangled attention on (batch*heads, seq, size) tensors, relative-position terms added to the scores
    "deberta-v3": (lambda: T.DebertaV2Config(**SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                             position_buckets=32, max_relative_positions=64,
                                             norm_rel_ebd="layer_norm"), (2, 6, 2, 0, 0)),
    # relative-position bias added to unscaled scores, RMSNorm
    "t5-encoder": (lambda: T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=1000),
                   (2, 0, 0, 5, 0)),
    "qwen2": (lambda: T.Qwen2Config(**SMALL, num_key_value_heads=2), (2, 0, 0, 5, 4)),
    # partial rotary and a parallel attention/MLP block
    "phi": (lambda: T.PhiConfig(**SMALL), (2, 3, 2, 0, 4)),
    # multi-query attention (one key/value head), tanh GELU, (1 + weight) RMSNorm
    "gemma": (lambda: T.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16), (2, 0, 2, 5, 4)),
}
KINDS = ("attention", "layernorm", "gelu", "rmsnorm", "rotary")


@pytest.fixture(scope="module")
def zoo_models():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_from_config(ARCHITECTURES[name][0](), "feature-extraction", {"kind": "test", "spec": name})
        return cache[name]

    return get


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_fuses_fully(tmp_path, zoo_models, name: str, exporter: str) -> None:
    loaded = zoo_models(name)
    exported = attnopt.export(loaded, tmp_path / f"{name}.onnx", exporter=exporter, verify=False)
    out = tmp_path / f"{name}.ort.onnx"
    report = attnopt.optimize(exported.path, out, target="ort").report
    assert not any(p["rolled_back"] for p in report["verification"]["passes"])
    for kind, sites in zip(KINDS, ARCHITECTURES[name][1]):
        got = report["fusions"][kind]
        assert (got["sites"], got["fused"], got["unfused"]) == (sites, sites, []), (kind, got)
    feed = {k: v.numpy() for k, v in loaded.make_inputs(2, 13, seed=4).items()}
    with OrtRunner(out) as runner, TorchRunner(loaded.module, loaded.input_names, loaded.output_names) as ref:
        got, want = runner.infer(feed), ref.infer(feed)
    for output in loaded.output_names:
        np.testing.assert_allclose(got[output], want[output], atol=1e-4, rtol=1e-3)
