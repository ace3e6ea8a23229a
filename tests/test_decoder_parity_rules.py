"""The generation verifier on purpose-broken steps (no export needed): each way a cached decoder goes
wrong in the field must fail, at the step that shows it, with the output named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnopt.errors import AttnoptError
from attnopt.generation.loop import greedy, left_padded, positions
from attnopt.models import load_model
from attnopt.parity.generation import TokenResult, torch_step, verify_generation


@pytest.fixture(scope="module")
def loaded():
    return load_model("mistral-tiny", cache=True)  # GQA, head_dim != hidden/heads, sliding window 6


def test_reference_against_itself_passes(loaded) -> None:
    parity = verify_generation(loaded, torch_step(loaded))
    assert parity.passed, parity.first_failure
    assert parity.tokens.expected == parity.tokens.actual


def test_a_corrupted_present_on_decode_is_named(loaded) -> None:
    reference = torch_step(loaded)

    def broken(feeds):
        out = reference(feeds)
        if feeds["input_ids"].shape[1] == 1:  # decode steps only: a one-step check would pass
            out["present.1.value"] = out["present.1.value"] + 1e-2
        return out

    parity = verify_generation(loaded, broken)
    assert not parity.passed
    assert parity.first_failure.startswith("decode step 1") and "present.1.value" in parity.first_failure
    assert parity.layer_max_abs[1] > parity.layer_max_abs[0]


def test_ignoring_left_padding_fails_the_batched_prefill(loaded) -> None:
    reference = torch_step(loaded)

    def unmasked(feeds):
        return reference({**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])})

    parity = verify_generation(loaded, unmasked)
    assert parity.first_failure.startswith("prefill (empty past) step 0")


def test_positions_restarting_each_step_fail_decode(loaded) -> None:
    reference = torch_step(loaded)

    def restarted(feeds):
        seq = feeds["input_ids"].shape[1]
        return reference({**feeds, "position_ids": np.broadcast_to(np.arange(seq), feeds["input_ids"].shape).copy()})

    parity = verify_generation(loaded, restarted)
    assert not parity.passed
    assert any(not s.passed for s in parity.steps if s.scenario == "decode"), "every decode step has a past"


def test_first_divergence() -> None:
    tokens = TokenResult(expected=[[1, 2, 3], [4, 5]], actual=[[1, 2, 3], [4, 6]])
    assert tokens.first_divergence == {"row": 1, "step": 1, "expected": 5, "actual": 6}
    assert TokenResult([[1, 2]], [[1]]).first_divergence == {"row": 0, "step": 1, "expected": 2, "actual": None}


def test_left_padding_and_positions() -> None:
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask, 3).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_greedy_loop_matches_hf_generate_with_eos(loaded) -> None:
    from attnopt.parity.generation import hf_generate

    step = torch_step(loaded)
    first = greedy(step, [[3, 4, 5]], loaded.cache, 4).tokens[0]
    eos = (first[1],)  # the second token ends the generation: the loop and HF must both stop there
    assert greedy(step, [[3, 4, 5]], loaded.cache, 4, eos_ids=eos).tokens[0] == first[:2]
    assert hf_generate(loaded, [[3, 4, 5]], 4, eos, 0)[0] == first[:2]


def test_a_wrong_past_from_python_is_one_line(loaded) -> None:
    inputs = list(loaded.make_inputs(2, 3, past=4).values())
    inputs[3] = torch.zeros(2, 4, 4, 48)  # 4 kv heads where the model has 2
    with pytest.raises(AttnoptError, match=r"past_key_values.0.key has shape \(2, 4, 4, 48\); expected"):
        loaded.module(*inputs)
    with pytest.raises(AttnoptError, match="got 1 past tensors"):
        loaded.module(*inputs[:4])
