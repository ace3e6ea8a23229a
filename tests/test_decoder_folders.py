"""Every artifact of a decoder stays loadable: `optimize` and `quantize` on an exported decoder folder write a
folder of their own (tokenizer, generation config, a genai_config.json for the new graph) that
onnxruntime-genai runs as it is, and that generates what attnopt's own loop generates on the same file."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

import attnopt
from attnopt.cli import cli
from attnopt.parity.tolerance import LANGUAGE_MODEL_DEFAULTS
from attnopt.passes.precision.calibration import DEFAULT_TEXT
from attnopt.passes.precision.cast import fill_types

PROMPTS = ([8, 9, 10, 4], [100, 7, 42, 300, 5, 6, 250])
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def export(tiny_llama_export) -> Path:
    """A tiny Llama (hidden 64, MLP 128: int4 blocks of 32 divide every weight) exported into its folder
    (conftest's session export, shared with test_decoder_export); this module's artifacts go beside it."""
    return tiny_llama_export[1].path


def ort_tokens(folder: Path, prompt: list[int]) -> list[int]:
    """attnopt's own greedy loop on ONNX Runtime, on the file the folder's sidecar describes."""
    from attnopt.generation.artifact_folder import open_decoder_folder
    from attnopt.generation.loop import greedy
    from attnopt.runtime import OrtRunner

    opened = open_decoder_folder(folder)
    with OrtRunner(opened.model) as runner:
        return greedy(runner.infer, [prompt], opened.layout, NEW_TOKENS, eos_ids=opened.eos_ids,
                      pad_id=opened.pad_id).tokens[0]


def genai_tokens(folder: Path, prompt: list[int]) -> list[int]:
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (CI installs it)")
    from attnopt.generation.genai_backend import genai_greedy

    return genai_greedy(folder, prompt, NEW_TOKENS).tokens[0]


def assert_runtime_folder(path: Path, source: Path) -> dict:
    folder = path.parent
    for name in ("tokenizer.json", "generation_config.json", "genai_config.json", path.name, "model.attnopt.json"):
        assert (folder / name).is_file(), name
    genai = json.loads((folder / "genai_config.json").read_text())
    graph = onnx.load(str(path), load_external_data=False).graph
    decoder = genai["model"]["decoder"]
    assert decoder["filename"] == path.name
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    for name in [*decoder["inputs"].values(), *decoder["outputs"].values()]:
        assert (name % 0 if "%d" in name else name) in names, name
    # GroupQueryAttention reads and writes attnopt's cache in place (the probe proves it); a Concat cannot
    in_place = any(n.op_type == "GroupQueryAttention" for n in graph.node)
    assert genai["search"]["past_present_share_buffer"] is in_place
    sidecar = json.loads((folder / "model.attnopt.json").read_text())
    assert "genai_config.json" in sidecar["decoder"]["runtime_files"] and sidecar["decoder"]["cache"]
    assert json.loads((source.parent / "genai_config.json").read_text())["model"]["decoder"]["filename"] == \
        source.name, "the input's folder is left as it was"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    return genai


@pytest.fixture(scope="module")
def optimized(export: Path):
    """The export optimized for ort into a folder that does not exist beforehand (optimize must create it),
    once for this module's tests, which must not modify its files."""
    return attnopt.optimize(export, export.parent.parent / "ort" / "model.onnx", target="ort")


def test_optimized_folder_generates_the_export_tokens(export: Path, optimized) -> None:
    out = optimized.path
    assert optimized.runtime_files and "genai_config.json" in optimized.runtime_files
    assert_runtime_folder(out, export)
    # the skip norms name only the outputs read: a named one is computed and written at every step
    norms = [n for n in onnx.load(str(out), load_external_data=False).graph.node
             if n.op_type == "SkipSimplifiedLayerNormalization"]
    assert norms and all(list(n.output[1:3]) in ([], ["", ""]) for n in norms)
    assert len(norms[-1].output) == 1, "after the last layer nothing reads the residual sum"
    generated = [ort_tokens(out.parent, prompt) for prompt in PROMPTS]
    assert generated == [ort_tokens(export.parent, prompt) for prompt in PROMPTS]  # before genai may skip the test
    # attnopt generate runs the ort folder as onnxruntime-genai does, with one buffer for past and present
    from attnopt.generation.generate import generate

    assert generate(out.parent, "w5 w6 w7", max_new_tokens=NEW_TOKENS).tokens == \
        generate(export.parent, "w5 w6 w7", max_new_tokens=NEW_TOKENS).tokens
    assert [genai_tokens(out.parent, prompt) for prompt in PROMPTS] == generated == \
        [genai_tokens(export.parent, prompt) for prompt in PROMPTS]


def test_onnxruntime_genai_batch_gives_each_prompts_tokens(export: Path, optimized) -> None:
    """onnxruntime-genai pads a batch on the right: every row of the ort folder's batch generates what the row
    generates alone (its LM head reads each row's last real token, not the last position)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (CI installs it)")
    import numpy as np
    import onnxruntime_genai as og

    width = max(map(len, PROMPTS))
    for folder in (optimized.path.parent, export.parent):
        ids = np.full((len(PROMPTS), width), 2, dtype=np.int32)  # the tiny Llama's pad id
        for row, prompt in enumerate(PROMPTS):
            ids[row, :len(prompt)] = prompt
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, top_k=1, batch_size=len(PROMPTS), max_length=width + NEW_TOKENS,
                                  min_length=width + NEW_TOKENS)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        rows: list[list[int]] = [[] for _ in PROMPTS]
        while not generator.is_done() and len(rows[0]) < NEW_TOKENS:
            generator.generate_next_token()
            for row, token in zip(rows, generator.get_next_tokens()):
                row.append(int(token))
        assert rows == [ort_tokens(export.parent, prompt) for prompt in PROMPTS], folder.name


@pytest.mark.parametrize("precision, options", [
    ("int8-weights", {}),
    ("int4", {}),
    ("int4", {"method": "hqq", "lm_head_bits": 4}),
])
def test_quantized_folder_runs_on_onnxruntime_genai(export: Path, precision: str, options: dict) -> None:
    name = "-".join([precision, *map(str, options.values())])
    out = export.parent.parent / name / "model.onnx"
    result = attnopt.quantize(export, out, precision=precision, accuracy_aware=False, keep_failed=True, **options)
    assert result.path == out and result.report["runtime_files"]
    assert_runtime_folder(out, export)
    for prompt in PROMPTS:
        assert genai_tokens(out.parent, prompt) == ort_tokens(out.parent, prompt)


def test_fp16_keeps_group_query_attention_in_fp16(export: Path, optimized, tiny_llama_export) -> None:
    """fp16 of the ort graph computes GroupQueryAttention in fp16 (on CUDA its kernels are fp16/bf16 only; an
    fp32 one runs on the CPU): its mask fills and its padding rows must not hold it in fp32. Its KV cache is
    fp16 at the graph's edges too and the logits fp32 (--fp32-cache keeps the cache fp32 there). The folder
    passes `attnopt check` under the causal-LM defaults and generates the fp32 graph's tokens, on attnopt's
    loop and on onnxruntime-genai."""
    ort_folder = optimized.path.parent
    out = export.parent.parent / "ort-fp16" / "model.onnx"
    result = attnopt.quantize(ort_folder / "model.onnx", out, precision="fp16")
    assert result.report["passed"] and result.report["kept"] == [], result.report["kept"]
    # a causal LM with its tokenizer: calibrated on text, held to its logits' distributions, not an abs bound
    assert result.report["calibration"]["source"] == str(DEFAULT_TEXT)
    assert result.report["tolerance"] == LANGUAGE_MODEL_DEFAULTS["fp16"].to_dict()
    model = ir.load(out)
    fill_types(model)
    attention = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert len(attention) == 2 and all(n.inputs[0].dtype == ir.DataType.FLOAT16 for n in attention)
    edges = {v.name: v.dtype for v in [*model.graph.inputs, *model.graph.outputs]}
    assert edges["logits"] == ir.DataType.FLOAT and any(n.startswith("past_key_values.") for n in edges)
    assert all(t == ir.DataType.FLOAT16 for n, t in edges.items() if n.startswith(("past_key_values.", "present.")))
    kept = attnopt.quantize(ort_folder / "model.onnx", out.parent.parent / "ort-fp16-fp32-cache" / "model.onnx",
                            precision="fp16", fp32_cache=True)
    assert {v.type.tensor_type.elem_type for v in onnx.load(str(kept.path), load_external_data=False).graph.input
            if v.name.startswith("past_key_values.")} == {onnx.TensorProto.FLOAT}
    assert_runtime_folder(out, ort_folder / "model.onnx")
    checked = attnopt.check(str(tiny_llama_export[0]), [out])
    assert checked.passed, [(c.label, c.metrics.reason) for c in checked.failures]
    assert {tuple(sorted(c.criteria.items())) for c in checked.cases} == {(("cosine", 0.999), ("top1", 0.95))}
    generated = [ort_tokens(out.parent, prompt) for prompt in PROMPTS]
    assert generated == [ort_tokens(ort_folder, prompt) for prompt in PROMPTS]  # before genai may skip the test
    assert generated == [genai_tokens(out.parent, prompt) for prompt in PROMPTS]


def test_fp16_with_its_cache_in_fp16_at_the_edges(export: Path, optimized, tiny_llama_export) -> None:
    """--no-keep-io-types on a decoder: the past, the presents and the logits are fp16 at the graph's edges (no
    Cast of the cache at every step). attnopt's loop feeds an empty past in the declared type, so the folder
    generates the fp32 graph's tokens there and on onnxruntime-genai, and passes `attnopt check`."""
    ort_folder = optimized.path.parent
    out = export.parent.parent / "ort-fp16-io" / "model.onnx"
    result = attnopt.quantize(ort_folder / "model.onnx", out, precision="fp16", keep_io_types=False)
    assert result.report["passed"] and result.report["kept"] == [], result.report["kept"]
    graph = onnx.load(str(out), load_external_data=False).graph
    floats = [v for v in [*graph.input, *graph.output] if v.type.tensor_type.elem_type != onnx.TensorProto.INT64]
    assert floats and {v.type.tensor_type.elem_type for v in floats} == {onnx.TensorProto.FLOAT16}
    cache = {v.name for v in graph.input if v.name.startswith("past_key_values.")}
    assert cache and not [n for n in graph.node if n.op_type == "Cast" and n.input[0] in cache]
    checked = attnopt.check(str(tiny_llama_export[0]), [out])
    assert checked.passed, [(c.label, c.metrics.reason) for c in checked.failures]
    generated = [ort_tokens(out.parent, prompt) for prompt in PROMPTS]
    assert generated == [ort_tokens(ort_folder, prompt) for prompt in PROMPTS]  # before genai may skip the test
    assert generated == [genai_tokens(out.parent, prompt) for prompt in PROMPTS]


def test_an_output_beside_another_decoder_is_refused(export: Path) -> None:
    """genai_config.json names one model: an artifact in the export's own folder would not be loadable."""
    before = sorted(p.name for p in export.parent.iterdir())
    for command in (["optimize", str(export), "-o", str(export.parent / "model.ort.onnx")],
                    ["quantize", str(export), "-o", str(export.parent / "model.int4.onnx"), "--precision", "int4"]):
        run = CliRunner().invoke(cli, command)
        assert run.exit_code == 2, run.output
        assert "already holds the decoder model.onnx" in run.stderr and "export-" in run.stderr
        assert len(run.stderr.strip().splitlines()) <= 2  # the error and its hint, no traceback
    assert sorted(p.name for p in export.parent.iterdir()) == before


def test_a_failed_quantize_leaves_no_folder(export: Path) -> None:
    out = export.parent.parent / "never" / "model.onnx"
    result = attnopt.quantize(export, out, precision="int4", accuracy_aware=False, tolerance={"cosine": 0.9999999})
    assert not result.passed and result.path is None and not out.parent.exists()


def test_shared_buffer_generates_what_concatenation_does(export: Path, optimized) -> None:
    """The ort graph run with one buffer for past and present gives the concatenating run's logits and cache
    step by step on a left-padded batch, decoding in place (the same buffers, step after step), and its greedy
    tokens from a buffer too small at first (it grows)."""
    import numpy as np

    from attnopt.generation.artifact_folder import open_decoder_folder
    from attnopt.generation.loop import first_feeds, greedy, left_padded, next_feeds
    from attnopt.generation.shared_cache import SharedCacheStep
    from attnopt.runtime import OrtRunner

    folder = open_decoder_folder(optimized.path.parent)
    layout = folder.layout
    assert folder.shares_buffer and not open_decoder_folder(export.parent).shares_buffer
    past, present = layout.past_names()[0], layout.present_names()[0]
    with OrtRunner(folder.model) as runner:
        step = SharedCacheStep(runner.session, layout, capacity=32)
        ids, mask = left_padded(list(PROMPTS), 0)
        shared_feeds = concat_feeds = first_feeds(ids, mask, layout)
        buffers = None
        for token in (None, 11, 12, 13):
            if token is not None:
                new = np.full((len(PROMPTS), 1), token)
                shared_feeds = next_feeds(shared_feeds, mine, new, layout)
                concat_feeds = next_feeds(concat_feeds, theirs, new, layout)
            mine, theirs = step(shared_feeds), runner.infer(concat_feeds)
            kept = concat_feeds["attention_mask"].astype(bool)
            np.testing.assert_allclose(mine["logits"][:, -1], theirs["logits"][:, -1], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(np.moveaxis(mine[present], 2, 1)[kept], np.moveaxis(theirs[present], 2, 1)[kept],
                                       rtol=1e-4, atol=1e-4)
            assert buffers is None or step.buffers[past] is buffers, "a decode step left its buffers"
            buffers = step.buffers[past]
        small = SharedCacheStep(runner.session, layout, capacity=4)
        shared = greedy(small, list(PROMPTS), layout, NEW_TOKENS)
        assert small.capacity > 4
        assert shared.tokens == greedy(runner.infer, list(PROMPTS), layout, NEW_TOKENS).tokens


def _one_attention_decoder(lengths_from: str) -> "onnx.ModelProto":
    """A one-layer decoder around GroupQueryAttention whose lengths come from the attention mask (as attnopt's
    lowering writes them) or from the past's shape plus the new tokens (which no longer hold once the past is
    a buffer longer than the cache: the shared run fails); "mask+past" takes them from the mask but adds the
    past's length to the logits (the shared run runs and gives other numbers)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    heads, kv_heads, dim, vocab = 2, 1, 8, 100
    rng = np.random.default_rng(0)
    weights = {"embedding": rng.normal(size=(vocab, heads * dim)), "qkv": rng.normal(size=(heads * dim, (heads + 2 * kv_heads) * dim)),
               "head": rng.normal(size=(heads * dim, vocab))}
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    inputs += [helper.make_tensor_value_info(f"past_key_values.0.{k}", TensorProto.FLOAT, ["batch", kv_heads, "past", dim])
               for k in ("key", "value")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    outputs += [helper.make_tensor_value_info(f"present.0.{k}", TensorProto.FLOAT, ["batch", kv_heads, "all", dim])
                for k in ("key", "value")]
    if lengths_from.startswith("mask"):
        lengths = [helper.make_node("Shape", ["attention_mask"], ["total64"], start=1, end=2)]
    else:
        lengths = [helper.make_node("Shape", ["past_key_values.0.key"], ["past64"], start=2, end=3),
                   helper.make_node("Shape", ["input_ids"], ["new64"], start=1, end=2),
                   helper.make_node("Add", ["past64", "new64"], ["total64"])]
    nodes = [helper.make_node("Gather", ["embedding", "input_ids"], ["hidden"]),
             helper.make_node("MatMul", ["hidden", "qkv"], ["packed"]), *lengths,
             helper.make_node("Sub", ["total64", "one"], ["last64"]),
             helper.make_node("Shape", ["input_ids"], ["batch64"], start=0, end=1),
             helper.make_node("Expand", ["last64", "batch64"], ["seqlens64"]),
             helper.make_node("Cast", ["seqlens64"], ["seqlens_k"], to=TensorProto.INT32),
             helper.make_node("Squeeze", ["total64"], ["total_scalar"]),
             helper.make_node("Cast", ["total_scalar"], ["total_length"], to=TensorProto.INT32),
             helper.make_node("GroupQueryAttention", ["packed", "", "", "past_key_values.0.key", "past_key_values.0.value",
                                                      "seqlens_k", "total_length"],
                              ["attended", "present.0.key", "present.0.value"], domain="com.microsoft",
                              num_heads=heads, kv_num_heads=kv_heads),
             helper.make_node("MatMul", ["attended", "head"], ["logits" if lengths_from != "mask+past" else "scores"])]
    if lengths_from == "mask+past":
        nodes += [helper.make_node("Shape", ["past_key_values.0.key"], ["past_length"], start=2, end=3),
                  helper.make_node("Cast", ["past_length"], ["past_float"], to=TensorProto.FLOAT),
                  helper.make_node("Add", ["scores", "past_float"], ["logits"])]
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    graph = helper.make_graph(nodes, "one_attention", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("lengths_from, shared", [("mask", True), ("past", False), ("mask+past", False)])
def test_buffer_sharing_is_proven_by_running_the_graph(tmp_path: Path, lengths_from: str, shared: bool) -> None:
    from attnopt.generation.shared_cache import shares_cache_buffer
    from attnopt.models.decoder import CacheLayout

    path = tmp_path / "model.onnx"
    onnx.save(_one_attention_decoder(lengths_from), str(path))
    layout = CacheLayout(num_layers=1, kv_heads=1, head_dim=8, num_heads=2, hidden_size=16, vocab_size=100,
                         max_positions=None)
    assert shares_cache_buffer(path, layout) is shared


def test_a_concatenating_export_shares_no_buffer(export: Path) -> None:
    from attnopt.generation.artifact_folder import open_decoder_folder
    from attnopt.generation.shared_cache import shares_cache_buffer

    assert shares_cache_buffer(export, open_decoder_folder(export.parent).layout) is False
