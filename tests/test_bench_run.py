"""attnopt bench and attnopt run: fields, sweeps, skipped backends, caching, failure handling, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli
from attnopt.errors import AttnoptError
from attnopt.latency.stats import FASTER, SLOWER
from attnopt.usecases.run import latency_sentences, run


#: timing rounds for a `run` whose test asserts what ran, never what the timing concludes (the end-to-end test
#: reads each verdict sentence against its own comparison's verdict, whatever the timing concluded)
RUNS = 5


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def bert(export_cache, optimize_cache, tmp_path_factory) -> Path:
    from conftest import copy_export, copy_model

    folder = tmp_path_factory.mktemp("bench")  # the session's export and its ort optimization
    copy_export(export_cache("bert-tiny"), folder / "bert.onnx")
    copy_model(optimize_cache("bert-tiny").path, folder / "bert.ort.onnx")
    return folder


def test_bench_sweeps_and_fields(bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    result = invoke("-q", "bench", "bert-tiny", str(bert / "bert.onnx"), str(bert / "bert.ort.onnx"),
                    "--batch", "1,2", "--seq", "8,16", "--runs", "3", "--warmup", "1", "--json", str(out),
                    "--markdown", str(tmp_path / "b.md"), "--plot", str(tmp_path / "b.png"))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    backends = {r["backend"] for r in data["rows"]}
    assert backends == {"torch-cpu", "ort-cpu:bert.onnx", "ort-cpu:bert.ort.onnx"}
    assert {(r["batch"], r["seq"]) for r in data["rows"]} == {(1, 8), (1, 16), (2, 8), (2, 16)}
    for row in data["rows"]:
        assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_items_s", "memory_mb",
                "speedup", "rounds_ms"} <= set(row)
        assert row["rounds"] == 3 == len(row["rounds_ms"]) and row["runs"] >= 3
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert all(r["speedup"] == pytest.approx(1.0) for r in data["rows"] if r["backend"] == "torch-cpu")
    assert data["threads"] == 2 and data["baseline"] == "torch-cpu" and data["timing"]["mode"] == "interleaved"
    assert "no CUDA GPU" in data["skipped"]["torch-cuda"]
    # per point: the fused model against the raw export, and both against the baseline
    pairs = {(c["backend"], c["against"]) for c in data["comparisons"]}
    assert pairs == {("ort-cpu:bert.ort.onnx", "ort-cpu:bert.onnx"), ("ort-cpu:bert.onnx", "torch-cpu"),
                     ("ort-cpu:bert.ort.onnx", "torch-cpu")}
    assert len(data["comparisons"]) == 3 * 4
    for c in data["comparisons"]:
        assert c["ci_low"] <= c["ratio"] <= c["ci_high"]
        assert c["verdict"] == ("faster" if c["ci_low"] > 1 else "slower" if c["ci_high"] < 1 else
                                "no measurable difference")
    md = (tmp_path / "b.md").read_text()
    assert "| ort-cpu:bert.ort.onnx | 1 | 8 |" in md and "(95% CI " in md and "bert.ort.onnx (ort-cpu)" in md
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _denormal_entry(runner) -> str | None:
    try:
        return runner.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero")
    except RuntimeError:  # onnxruntime raises for an entry never set
        return None


def test_speed_sessions_flush_denormals_by_default_and_parity_sessions_do_not(bert: Path) -> None:
    from attnopt.latency.backends import backends_for
    from attnopt.runtime import runner_for

    loaded = attnopt.load_model("bert-tiny")
    for flush, want in ((True, "1"), (False, None)):
        found = backends_for(loaded, [bert / "bert.ort.onnx"], 2, flush)
        (backend,) = [b for b in found if b.name.startswith("ort-cpu")]
        with backend.make() as runner:  # the session bench times
            assert _denormal_entry(runner) == want
            assert runner.session.get_session_options().intra_op_num_threads == 2
    with runner_for(bert / "bert.ort.onnx") as runner:  # what check runs: exact numerics
        assert _denormal_entry(runner) is None
    result = invoke("-q", "bench", "bert-tiny", str(bert / "bert.ort.onnx"), "--seq", "8", "--runs", "2",
                    "--warmup", "0", "--no-flush-denormals", "--blocks", "--json", str(bert / "nf.json"))
    data = json.loads((bert / "nf.json").read_text())
    assert result.exit_code == 0 and data["machine"]["ort_flush_denormals"] is False
    assert data["timing"] == {**data["timing"], "mode": "blocks", "why_blocks": "asked for blocks"}
    assert any("timed in blocks" in w for w in data["warnings"])


def test_bench_leaves_torch_threads_as_it_found_them(bert: Path) -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attnopt.bench("bert-tiny", [bert / "bert.onnx"], seqs=[8], runs=2, warmup=0, threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bench_unknown_baseline(bert: Path) -> None:
    with pytest.raises(AttnoptError, match="unknown baseline"):
        attnopt.bench("bert-tiny", [bert / "bert.onnx"], baseline="tensorrt:nope", runs=2, warmup=0)
    with pytest.raises(AttnoptError, match="--runs must be at least 2"):
        attnopt.bench("bert-tiny", [bert / "bert.onnx"], runs=1)


def test_runner_choice_says_why_an_engine_cannot_run(tmp_path: Path) -> None:
    from attnopt.engine.environment import tensorrt_unavailable
    from attnopt.errors import MissingDependencyError
    from attnopt.runtime import choose_runner

    engine = tmp_path / "m.engine"
    on_cpu = choose_runner(engine, "cpu")
    assert on_cpu.make is None and on_cpu.unavailable == "a TensorRT engine runs on a CUDA GPU only"
    with pytest.raises(MissingDependencyError, match="CUDA GPU only"):
        on_cpu.open()
    on_gpu = choose_runner(engine, "cuda")
    assert on_gpu.unavailable == tensorrt_unavailable() and (on_gpu.make is None) == bool(on_gpu.unavailable)


def test_run_end_to_end_caches_and_redoes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("bert-tiny", out, shapes=[(2, 16)], seqs=[16], runs=RUNS)
    assert first.ok
    statuses = {s.name: s.status for s in first.stages}
    assert statuses == {"export": "done", "optimize": "done", "build": "skipped", "check": "done", "bench": "done"}
    report = json.loads((out / "report.json").read_text())
    assert report["coverage"]["attention"]["fused"] == 2 and report["parity"]["passed"]
    md = (out / "report.md").read_text()
    assert "## Fusion coverage" in md and "## Parity against PyTorch" in md and "## Latency" in md
    (fused_vs_raw,) = [c for c in report["latency"]["comparisons"]
                       if (c["backend"], c["against"]) == ("ort-cpu:model.ort.onnx", "ort-cpu:model.onnx")]
    assert fused_vs_raw["ci_low"] <= fused_vs_raw["ratio"] <= fused_vs_raw["ci_high"]
    sentences = latency_sentences(report["latency"])
    assert len(sentences) == 3 and all(f"- {line}" in md for line in sentences)
    # The verdict depends on this machine's load; the sentence must name both artifacts, the runtime and
    # the interval whatever it is.
    (fused_sentence,) = [s for s in sentences if "model.ort.onnx and model.onnx on" in s
                         or "model.ort.onnx is" in s and "than model.onnx on" in s]
    assert "model.onnx on ort-cpu (" in fused_sentence and "95% CI" in fused_sentence
    claims = {FASTER: "x faster than", SLOWER: "x slower than"}.get(fused_vs_raw["verdict"], "no measurable")
    assert claims in fused_sentence
    assert "Timed interleaved" in md and "exact numerics" in md
    assert (out / "latency.png").is_file() and (out / "model.ort.onnx").is_file()
    again = run("bert-tiny", out, shapes=[(2, 16)], seqs=[16], runs=RUNS)
    assert {s.name: s.status for s in again.stages}["optimize"] == "cached"
    assert {s.name: s.status for s in again.stages}["export"] == "cached"
    (out / "model.ort.onnx").unlink()  # an output gone: its stage is redone, the others stay cached
    third = run("bert-tiny", out, shapes=[(2, 16)], seqs=[16], runs=RUNS)
    assert {s.name: s.status for s in third.stages}["optimize"] == "done"
    assert {s.name: s.status for s in third.stages}["export"] == "cached"


def test_run_stops_at_the_first_failing_stage(tmp_path: Path) -> None:
    factory = tmp_path / "m.py"
    factory.write_text("def build():\n    raise RuntimeError('weights are corrupt')\n")
    out = tmp_path / "out"
    result = invoke("run", f"{factory}:build", "--out", str(out))
    assert result.exit_code == 1
    assert "stage export failed" in result.stderr and "weights are corrupt" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["failed"]


def test_run_with_int8_quantizes_checks_and_benchmarks_the_int8_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("bert-tiny", out, precision="int8", shapes=[(2, 16)], seqs=[16], runs=RUNS)
    assert first.ok, [(s.name, s.detail) for s in first.stages]
    assert [s.name for s in first.stages] == ["export", "optimize", "quantize", "build", "check", "bench"]
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["precision"] == "int8" and report["quantization"]["nodes"]["int8"] > 0
    checked = {Path(c["artifact"]).name: c["precision"] for c in report["parity"]["cases"]}
    assert checked["model.ort.int8.onnx"] == "int8"
    assert "ort-cpu:model.ort.int8.onnx" in {r["backend"] for r in report["latency"]["rows"]}
    assert "## Precision" in (out / "report.md").read_text()
    again = run("bert-tiny", out, precision="int8", shapes=[(2, 16)], seqs=[16], runs=RUNS)
    assert {s.name: s.status for s in again.stages}["quantize"] == "cached"


def test_run_stops_at_a_failing_quantize_stage(tmp_path: Path) -> None:
    (tmp_path / "calib.txt").write_text("a sentence\n")
    result = invoke("run", "bert-tiny", "--out", str(tmp_path / "o"), "--precision", "int8",
                    "--calibration", str(tmp_path / "calib.txt"))
    assert result.exit_code == 1
    assert "stage quantize failed" in result.stderr and "tokenizer" in result.stderr
    stages = json.loads((tmp_path / "o" / "report.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["done", "done", "failed"]
    assert (tmp_path / "o" / "model.ort.onnx").is_file()  # earlier artifacts stay


@pytest.mark.slow
def test_run_on_the_real_minilm(tmp_path: Path) -> None:
    """The README's main command, on the bundled model, as `attnopt run` with no MODEL runs it (with RUNS timing
    rounds instead of 50: what is asserted is what ran, never how fast)."""
    result = invoke("-q", "run", "--out", str(tmp_path / "out"), "--runs", str(RUNS))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"] == "minilm" and report["parity"]["passed"]
    assert report["coverage"]["attention"] == {**report["coverage"]["attention"], "sites": 6, "fused": 6}
    assert {r["backend"] for r in report["latency"]["rows"]} >= {"torch-cpu", "ort-cpu:model.onnx",
                                                                 "ort-cpu:model.ort.onnx"}
