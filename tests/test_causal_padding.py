"""A decoder's mask shown to be causal AND the key padding of attention_mask, by running its own ops alone:
proved for the forms that are (bool keep-mask, float bias), refused for every one that is not or cannot be
shown (a sliding window wider than the short probes, causality alone, another input read by value, a bias
too shallow to floor, the context length unknown)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnopt.passes.lower.causal_padding import padding_input

POSITIONS = 64


def _mask_model(window: int | None = None, pad: bool = True, fill: float | None = None,
                queries_from_positions: bool = False, length_of_embedding: bool = False, span: bool = False,
                whole_mask: bool = False) -> ir.Model:
    """keep[b, 0, i, j] = j <= past + i (and j > past + i - window) (and attention_mask[b, j]), the way
    transformers builds it from the lengths; `fill`: as a float bias 0 / fill instead of bool;
    `length_of_embedding`: the new tokens counted off the embedded tokens, a tensor of no declared shape
    (as TorchScript writes it), so the token ids are read for their shape alone; `span`: every key from a row's
    first real token to its last counts (gaps inside ignored); `whole_mask`: the attention_mask read whole, not
    its first past + new columns."""
    embed = [helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
             helper.make_node("Shape", ["embedded"], ["new"], start=1, end=2)]
    nodes = [
        *(embed if length_of_embedding else [helper.make_node("Shape", ["input_ids"], ["new"], start=1, end=2)]),
        helper.make_node("Shape", ["past"], ["cached"], start=2, end=3),
        helper.make_node("Add", ["cached", "new"], ["total"]),
        helper.make_node("Squeeze", ["cached"], ["cached_0d"]),
        helper.make_node("Squeeze", ["total"], ["total_0d"]),
        helper.make_node("Range", ["zero", "total_0d", "one"], ["key_pos"]),
        helper.make_node("Unsqueeze", ["key_pos", "rows"], ["key_row"]),
    ]
    if queries_from_positions:  # the query positions read off position_ids' values: another input
        nodes += [helper.make_node("Gather", ["position_ids", "zero"], ["first_row"], axis=0),
                  helper.make_node("Unsqueeze", ["first_row", "cols"], ["query_col"])]
    else:
        nodes += [helper.make_node("Range", ["cached_0d", "total_0d", "one"], ["query_pos"]),
                  helper.make_node("Unsqueeze", ["query_pos", "cols"], ["query_col"])]
    nodes.append(helper.make_node("LessOrEqual", ["key_row", "query_col"], ["causal"]))
    keep = "causal"
    if window:
        nodes += [helper.make_node("Sub", ["query_col", "window"], ["oldest"]),
                  helper.make_node("Greater", ["key_row", "oldest"], ["recent"]),
                  helper.make_node("And", ["causal", "recent"], ["windowed"])]
        keep = "windowed"
    if pad:
        nodes.append(helper.make_node("Identity", ["attention_mask"], ["mask_keys"]) if whole_mask else
                     helper.make_node("Slice", ["attention_mask", "rows", "total", "cols"], ["mask_keys"]))
        if span:
            nodes += [helper.make_node("CumSum", ["mask_keys", "one"], ["from_left"]),
                      helper.make_node("CumSum", ["mask_keys", "one"], ["from_right"], reverse=1),
                      helper.make_node("Greater", ["from_left", "zero"], ["after_first"]),
                      helper.make_node("Greater", ["from_right", "zero"], ["before_last"]),
                      helper.make_node("And", ["after_first", "before_last"], ["spanned"]),
                      helper.make_node("Cast", ["spanned"], ["mask_keys_int"], to=TensorProto.INT64)]
        nodes += [helper.make_node("Cast", ["mask_keys_int" if span else "mask_keys"], ["real"], to=TensorProto.BOOL),
                  helper.make_node("Unsqueeze", ["real", "mid"], ["real_4d"]),
                  helper.make_node("And", [keep, "real_4d"], ["padded"])]
        keep = "padded"
    if fill is None:
        nodes.append(helper.make_node("Identity", [keep], ["mask"]))
    else:
        nodes.append(helper.make_node("Where", [keep, "f_zero", "f_fill"], ["mask"]))
    constants = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "rows": np.array([0], np.int64),
                 "cols": np.array([1], np.int64), "mid": np.array([1, 2], np.int64),
                 "window": np.array(window or 0, np.int64), "f_zero": np.array(0, np.float32),
                 "f_fill": np.array(fill or 0, np.float32), "table": np.ones((10, 3), np.float32)}
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence_length"]),
              helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch", 2, "past_sequence_length", 4])]
    graph = helper.make_graph(nodes, "mask", inputs, [helper.make_tensor_value_info("mask", TensorProto.UNDEFINED, None)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def _proved(model: ir.Model, positions: int | None = POSITIONS) -> str | None:
    mask = next(v for n in model.graph for v in n.outputs if v.name == "mask")
    found = padding_input(model, mask, positions)
    return None if found is None else found.name


@pytest.mark.parametrize("model", [
    pytest.param(_mask_model(), id="bool"),
    pytest.param(_mask_model(fill=float(np.finfo(np.float32).min)), id="float"),
    pytest.param(_mask_model(length_of_embedding=True), id="lengths off the embedded tokens"),
])
def test_causal_and_key_padding_is_proved(model: ir.Model) -> None:
    assert _proved(model) == "attention_mask"


@pytest.mark.parametrize("model", [
    pytest.param(_mask_model(window=16), id="window wider than the short probes"),
    pytest.param(_mask_model(pad=False), id="causal alone: no padding input"),
    pytest.param(_mask_model(queries_from_positions=True), id="position_ids read by value"),
    pytest.param(_mask_model(fill=-1e4), id="masked at -1e4, above the floor"),
    pytest.param(_mask_model(span=True), id="gaps inside a row's real tokens ignored"),
    pytest.param(_mask_model(whole_mask=True), id="a mask as wide as attention_mask, not the keys"),
])
def test_other_masks_are_refused(model: ir.Model) -> None:
    assert _proved(model) is None


def test_unknown_context_length_proves_nothing() -> None:
    """A window could hide beyond any probe when the context length is unknown."""
    assert _proved(_mask_model(), positions=None) is None
