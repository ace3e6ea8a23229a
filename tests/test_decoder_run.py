"""attnopt run and attnopt bench on a decoder with a KV cache: a cached export in a runtime folder, parity over
generations, latency at prefill and at decode per past length (the decode step on past p really fed a past of
length p), through the same interleaved machinery and report as encoders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from attnopt.cli import cli
from attnopt.errors import AttnoptError
from attnopt.latency.backends import Backend
from attnopt.latency.bench import measure
from attnopt.latency.decoder import decoder_points
from attnopt.latency.points import DECODE, PREFILL
from attnopt.models.decoder import CacheLayout
from attnopt.runtime import Runner
from attnopt.usecases.run import model_task, run

PRESET = "qwen2-tiny"  # GQA 4/1 heads, 2 layers, context 256
#: small budgets: a prompt of 8 tokens, pasts 0 and 16, and one past the tiny model's context cannot hold
PROMPT, PASTS, TOO_LONG = 8, [0, 16], 1000


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Any:
    out = tmp_path_factory.mktemp("decoder-run") / "out"
    return run(PRESET, out, exporter="torchscript", seqs=[PROMPT], pasts=[*PASTS, TOO_LONG], runs=3, threads=1)


def test_run_exports_with_the_cache_into_runtime_folders(done) -> None:
    assert done.ok, [(s.name, s.status, s.detail) for s in done.stages]
    status = {s.name: s.status for s in done.stages}
    assert status == {"export": "done", "optimize": "done", "build": "skipped", "check": "done", "bench": "done"}
    for name in ("model", "model-ort"):
        folder = done.out / name
        assert (folder / "genai_config.json").is_file() and (folder / "generation_config.json").is_file()
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        inputs = [i.name for i in graph.input]
        assert "past_key_values.0.key" in inputs and "past_key_values.1.value" in inputs
        assert "present.1.value" in [o.name for o in graph.output]
    assert done.report["decoder"] is True and done.report["target"] == "ort"


def test_run_checks_parity_over_generations(done) -> None:
    parity = done.report["parity"]
    assert parity["passed"]
    generations = parity["generation"]
    assert set(generations) == {str(done.out / "model" / "model.onnx"), str(done.out / "model-ort" / "model.onnx")}
    for g in generations.values():
        assert g["passed"] and g["precision"] == "fp32"
        assert g["tokens"]["identical"] and g["tokens"]["first_divergence"] is None
        assert {s["scenario"] for s in g["steps"]} == {"prefill (empty past)", "decode", "chunked prefill"}
        assert all(0.999 < s["logits_cosine"] < 1.000001 for s in g["steps"])  # measured, not assumed
    assert [c["cosine"] for c in parity["cases"] if c["name"] == "greedy tokens"] == [None, None]
    md = (done.out / "report.md").read_text()
    assert "`model-ort/model.onnx` (fp32): pass;" in md and "lowest logits cosine" in md
    assert "greedy tokens identical to Hugging Face generate" in md


def test_run_times_prefill_and_decode_per_past_with_comparisons(done) -> None:
    latency = done.report["latency"]
    backends = {"torch-cpu", "ort-cpu:model/model.onnx", "ort-cpu:model-ort/model.onnx"}
    points = {(r["phase"], r["seq"], r["past"]) for r in latency["rows"]}
    assert points == {(PREFILL, PROMPT, 0), (DECODE, 1, 0), (DECODE, 1, 16)}
    assert {r["backend"] for r in latency["rows"]} == backends
    for r in latency["rows"]:
        assert r["rounds"] == 3 and r["p50_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["seq"] / (r["p50_ms"] / 1000))
    assert any(f"past {TOO_LONG} left out: the model's context is 256 tokens" in w for w in latency["warnings"])
    pairs = {(c["backend"], c["against"]) for c in latency["comparisons"]}
    assert ("ort-cpu:model-ort/model.onnx", "ort-cpu:model/model.onnx") in pairs
    assert ("ort-cpu:model/model.onnx", "torch-cpu") in pairs
    for c in latency["comparisons"]:
        assert c["phase"] in (PREFILL, DECODE) and "past" in c
        assert c["verdict"] in ("faster", "slower", "no measurable difference")
        assert c["ci_low"] <= c["ratio"] <= c["ci_high"]
    md = (done.out / "report.md").read_text()
    assert f"prefill of {PROMPT} tokens" in md and "decode at past 16" in md and "ms/token" in md
    assert "tokens/s" in md and "decode, batch 1, past 16: " in md and "![latency](latency.png)" in md
    assert (done.out / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_is_cached(done) -> None:
    again = run(PRESET, done.out, exporter="torchscript", seqs=[PROMPT], pasts=[*PASTS, TOO_LONG], runs=3,
                threads=1)
    assert {s.name: s.status for s in again.stages} == {"export": "cached", "optimize": "cached", "build": "skipped",
                                                         "check": "cached", "bench": "cached"}


def test_bench_cli_on_decoder_folders(done, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["-q", "bench", PRESET, str(done.out / "model"), str(done.out / "model-ort"),
                                      "--seq", str(PROMPT), "--past", "0,16", "--runs", "2", "--warmup", "0",
                                      "--threads", "1", "--json", str(out), "--markdown", str(tmp_path / "b.md")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {(r["backend"], r["phase"], r["past"]) for r in data["rows"]} == {
        (b, phase, past) for b in ("torch-cpu", "ort-cpu:model/model.onnx", "ort-cpu:model-ort/model.onnx")
        for phase, past in ((PREFILL, 0), (DECODE, 0), (DECODE, 16))}
    assert {(c["phase"], c["past"]) for c in data["comparisons"]} == {(PREFILL, 0), (DECODE, 0), (DECODE, 16)}
    assert "| backend | phase | batch | seq | past | p50_ms |" in (tmp_path / "b.md").read_text()


def test_bench_refuses_another_task_for_a_decoder(done) -> None:
    result = CliRunner().invoke(cli, ["bench", PRESET, str(done.out / "model"), "--task", "feature-extraction"])
    assert result.exit_code == 2 and "is a causal LM, not feature-extraction" in result.output


class Recording(Runner):
    """A test double that records the shapes of what each timed call was fed."""

    def __init__(self, seen: list[dict[str, tuple[int, ...]]]):
        self.seen = seen

    def activate(self) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append({k: v.shape for k, v in feed.items()} | {"position_ids=": tuple(feed["position_ids"][0])})
        return {}


LAYOUT = CacheLayout(num_layers=2, kv_heads=3, head_dim=8, num_heads=6, hidden_size=48, vocab_size=50,
                     max_positions=64)


def test_decode_at_past_p_is_fed_a_past_of_length_p() -> None:
    feeds, notes = decoder_points(LAYOUT, [2], [5], [0, 7, 63, 64])
    assert notes == ["decode at past 64 left out: the model's context is 64 tokens"]
    seen: list[dict[str, Any]] = []
    rows, _, _ = measure([Backend("double", lambda: Recording(seen))], feeds, warmup=0, runs=2)
    assert {(r["phase"], r["past"]) for r in rows} == {(PREFILL, 0), (DECODE, 0), (DECODE, 7), (DECODE, 63)}
    fed = {(s["input_ids"][1], s["past_key_values.1.value"][2]): s for s in seen}
    assert set(fed) == {(5, 0), (1, 0), (1, 7), (1, 63)}  # every call of a point fed the same shapes
    for (seq, past), shapes in fed.items():
        assert shapes["input_ids"] == (2, seq) and shapes["attention_mask"] == (2, past + seq)
        pasts = [shapes[f"past_key_values.{i}.{kind}"] for i in range(2) for kind in ("key", "value")]
        assert pasts == [(2, 3, past, 8)] * 4
        assert shapes["position_ids="] == tuple(range(past, past + seq))


def test_no_point_in_the_context_is_one_line() -> None:
    with pytest.raises(AttnoptError, match="no prefill or decode point fits the model's context of 64 tokens"):
        decoder_points(LAYOUT, [1], [100], [64, 200])


def test_run_infers_the_task_like_export(tmp_path: Path) -> None:
    assert model_task(PRESET) == "causal-lm" and model_task("bert-tiny") == "feature-extraction"
    for architecture, task in (("LlamaForCausalLM", "causal-lm"), ("BertModel", "feature-extraction")):
        folder = tmp_path / architecture
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        assert model_task(str(folder)) == task


def test_bench_times_a_sharing_folder_in_one_buffer(done) -> None:
    """The ort folder's genai_config shares the cache buffer (GroupQueryAttention), the export's does not: the
    benchmark times each as it is run, and the shared step it times is the concatenating step's computation."""
    cache = {name: how for name, how in done.report["latency"]["timing"]["kv_cache"].items() if "-cpu:" in name}
    assert cache == {"ort-cpu:model/model.onnx": "concatenated",
                     "ort-cpu:model-ort/model.onnx": "one buffer for past and present"}
    assert "`ort-cpu:model-ort/model.onnx` one buffer for past and present" in (done.out / "report.md").read_text()
    from attnopt.latency.backends import backends_for
    from attnopt.models import load_model

    loaded = load_model(PRESET, "causal-lm", cache=True)
    sharing = next(b for b in backends_for(loaded, [done.out / "model-ort" / "model.onnx"], threads=1)
                   if b.name.startswith("ort-cpu"))
    feeds, _ = decoder_points(loaded.cache, [1], [PROMPT], [16])
    with sharing.make() as runner:
        assert runner.cache_protocol == "one buffer for past and present"
        for feed in feeds.values():
            expected = runner.infer(feed)["logits"]
            call = runner.prepare(feed)
            first = call()
            logits, present = first["logits"].copy(), first[loaded.cache.present_names()[0]]
            again = call()  # the same step repeated in the same buffer, not a step further on
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(again["logits"], expected, rtol=1e-4, atol=1e-5)
            assert present.shape[2] == feed["attention_mask"].shape[1]
            # views of one buffer, written in place: not a concatenated copy per call
            assert not present.flags.writeable and np.shares_memory(present, again[loaded.cache.present_names()[0]])
