"""A decoder's LM head computes the last position only (passes.last_logits): `optimize` writes it, verified
at the positions it computes; it is the export's last position on a left-padded batch and a chunk on a past;
`quantize` measures at every position all the same and writes the last-position form again; the pass undoes
itself exactly, and leaves alone what it cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import attnopt
from attnopt.generation.artifact_folder import open_decoder_folder
from attnopt.generation.loop import first_feeds, left_padded, next_feeds
from attnopt.passes.last_logits import computes_last_logits, keep_last_logits, lm_head, restore_all_logits
from attnopt.runtime import OrtRunner


@pytest.fixture(scope="module")
def folders(tiny_llama_export, tmp_path_factory) -> tuple[Path, Path]:
    """(the export's model.onnx, the ort folder's model.onnx)"""
    export = tiny_llama_export[1].path
    ort = attnopt.optimize(export, tmp_path_factory.mktemp("last-logits") / "ort" / "model.onnx", target="ort")
    assert any("last position's logits only" in note for note in ort.notes)
    return export, ort.path


def _logits_dims(path: Path) -> list:
    output = next(o for o in onnx.load(str(path), load_external_data=False).graph.output if o.name == "logits")
    return [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]


def _steps(path: Path, layout_from: Path | None = None) -> list[np.ndarray]:
    """Logits of a left-padded prefill, then a two-token chunk on its past, each fed the same tokens."""
    layout = open_decoder_folder((layout_from or path).parent).layout
    ids, mask = left_padded([[5, 9, 30, 4, 7], [8, 11]], pad_id=2)
    feeds = first_feeds(ids, mask, layout)
    with OrtRunner(path) as runner:
        first = runner.infer(feeds)
        second = runner.infer(next_feeds(feeds, first, np.array([[12, 13], [14, 15]]), layout))
    return [first["logits"], second["logits"]]


def test_the_ort_graph_gives_the_exports_last_logits(folders) -> None:
    export, ort = folders
    assert _logits_dims(ort)[1:] == [1, 503] and _logits_dims(export)[1] != 1
    for mine, full in zip(_steps(ort), _steps(export)):
        assert mine.shape == (2, 1, 503) and full.shape[1] > 1
        np.testing.assert_allclose(mine[:, 0], full[:, -1], rtol=1e-4, atol=1e-4)


def test_each_row_gets_its_last_real_token_whatever_the_padding(folders) -> None:
    """onnxruntime-genai pads a batch on the right, attnopt's loop on the left: the logits must be each row's
    last real token's either way (the last position would be padding on the right)."""
    export, ort = folders
    layout = open_decoder_folder(ort.parent).layout
    prompts = [[5, 9, 30], [8, 11, 40, 41, 42]]
    ids = np.full((2, 5), 2, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, 1
    feeds = {**first_feeds(ids, mask, layout), "position_ids": np.tile(np.arange(5), (2, 1))}
    with OrtRunner(ort) as mine, OrtRunner(export) as full:
        picked, every = mine.infer(feeds)["logits"], full.infer(feeds)["logits"]
    assert picked.shape == (2, 1, 503)
    for row, prompt in enumerate(prompts):
        np.testing.assert_allclose(picked[row, 0], every[row, len(prompt) - 1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(picked[0, 0], every[0, -1], atol=1e-3)  # the last position is padding there


def test_restoring_every_position_undoes_the_pass(folders, tmp_path: Path) -> None:
    _, ort = folders
    model = ir.load(str(ort))
    assert computes_last_logits(model)
    assert keep_last_logits(model) == "already computes the last position's logits only"
    nodes, initializers = len(model.graph), len(model.graph.initializers)
    assert restore_all_logits(model) and not computes_last_logits(model)
    assert not [n for n in model.graph if "last_logits" in n.name]
    assert (len(model.graph), len(model.graph.initializers)) == (nodes - 7, initializers - 4)
    assert not restore_all_logits(model)
    restored = tmp_path / "model.onnx"
    ir.save(model, restored)
    assert _logits_dims(restored)[1] not in (1, 0)  # the sequence axis is the input's again
    full = _steps(restored, layout_from=ort)
    for mine, every in zip(_steps(ort), full):
        assert every.shape[1] > 1
        np.testing.assert_allclose(mine[:, 0], every[:, -1], rtol=1e-5, atol=1e-6)


def test_quantize_measures_every_position_and_writes_the_last(folders) -> None:
    export, ort = folders
    from_ort = attnopt.quantize(ort, ort.parent.parent / "int8w" / "model.onnx", precision="int8-weights",
                                accuracy_aware=False)
    from_export = attnopt.quantize(export, ort.parent.parent / "int8w-export" / "model.onnx",
                                   precision="int8-weights", accuracy_aware=False)
    assert from_ort.report["logits"] == "last position" and from_export.report["logits"] == "every position"
    assert _logits_dims(from_ort.path)[1] == 1 and _logits_dims(from_export.path)[1] != 1
    # the fp32 perplexity of the calibration text needs the logits at every position: the same as the export's
    fp32 = [r.report["accuracy"]["perplexity_fp32"] for r in (from_ort, from_export)]
    assert fp32[0] == pytest.approx(fp32[1], rel=1e-4)


@pytest.mark.parametrize("precision, logits", [
    ("fp16", "last position"),
    ("int8", "every position (the logits' Mul mixes two computed values)"),
])
def test_quantize_writes_the_last_token_head_again_only_where_it_gives_the_same_logits(
        folders, precision: str, logits: str) -> None:
    _, ort = folders
    result = attnopt.quantize(ort, ort.parent.parent / precision / "model.onnx", precision=precision,
                              accuracy_aware=False, keep_failed=True)
    assert result.report["logits"] == logits
    assert (_logits_dims(result.path)[1] == 1) is (logits == "last position")


def test_optimize_keeps_every_position_when_asked(tiny_llama_export, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from attnopt.cli import cli

    out = tmp_path / "ort-all" / "model.onnx"
    result = CliRunner().invoke(cli, ["-q", "optimize", str(tiny_llama_export[1].path), "-o", str(out),
                                      "--logits", "all"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _logits_dims(out)[1] == _logits_dims(tiny_llama_export[1].path)[1] != 1
    assert not computes_last_logits(ir.load(str(out)))


def test_the_builders_prune_lm_head_is_restored_too(folders, tmp_path: Path) -> None:
    """onnxruntime-genai's builder picks the last position (Gather at -1 on axis 1, Unsqueeze): read every
    position again the same way, so its graphs can be measured teacher-forced."""
    _, ort = folders
    model = ir.load(str(ort))
    assert restore_all_logits(model)
    head, _ = lm_head(model)
    hidden = head.inputs[0]
    graph = model.graph
    index = ir.Value(name="/model/constants/INT64/-1", const_value=ir.tensor(np.array(-1, dtype=np.int64)))
    axes = ir.Value(name="/model/constants/INT64/[1]", const_value=ir.tensor(np.array([1], dtype=np.int64)))
    graph.register_initializer(index)
    graph.register_initializer(axes)
    gather = ir.node("Gather", [hidden, index], {"axis": 1}, name="/lm_head/prune/Gather")
    unsqueeze = ir.node("Unsqueeze", [gather.outputs[0], axes], name="/lm_head/prune/Unsqueeze")
    graph.insert_before(head, [gather, unsqueeze])
    head.replace_input_with(0, unsqueeze.outputs[0])
    assert computes_last_logits(model)
    assert restore_all_logits(model) and not computes_last_logits(model)
    assert "/model/constants/INT64/-1" not in graph.initializers and hidden in head.inputs


def test_what_the_pass_leaves_alone() -> None:
    def graph(text: str) -> ir.Model:
        return ir.from_proto(onnx.parser.parse_model(text))

    no_cache = graph("""<ir_version: 10, opset_import: ["" : 21]>
        g (float[1, 4, 8] h, float[8, 16] w) => (float[1, 4, 16] logits) { logits = MatMul(h, w) }""")
    assert keep_last_logits(no_cache) == "not a decoder with a KV cache"
    text = """<ir_version: 10, opset_import: ["" : 21]>
        g (float[1, 4, 8] h, float[8, 16] w, float[1, 2, 0, 4] past, int64[1, 4] mask) => (float[1, 4, 16] logits)
        { m = MatMul(h, w)  logits = Softmax<axis = 1>(m) }"""
    mixing = graph(text)
    mixing.graph.inputs[2].name = "past_key_values.0.key"
    without_mask = graph(text)
    without_mask.graph.inputs[2].name = "past_key_values.0.key"
    assert keep_last_logits(without_mask) == "no attention_mask to find each row's last token"
    mixing.graph.inputs[3].name = "attention_mask"
    assert lm_head(mixing)[0] is None
    assert keep_last_logits(mixing) == "the logits come from a Softmax, not from a MatMul through per-position ops"
