"""The row containers' shared base: rationale fields derived one way, rows taken one way."""
from __future__ import annotations

import torch

from grace.generation.rollout import RolloutBatch
from grace.model.prompts import Span
from grace.rewards import RewardInputs


def _batch(texts: list[str]) -> RolloutBatch:
    P, T = Span.INPUT, Span.RATIONALE
    return RolloutBatch(
        sequence_ids=torch.tensor([[0, 5, 6, 7], [4, 5, 8, 0], [4, 5, 9, 9]]),
        attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]),
        spans=torch.tensor([[Span.PAD, P, T, T], [P, P, T, Span.PAD], [P, P, T, T]]),
        logprobs=torch.tensor([[-1.0, -2.0], [-3.0, 0.0], [-4.0, -5.0]]),
        embeddings=torch.eye(3),
        group=torch.tensor([0, 0, 1]),
        role=torch.tensor([1, 1, 0]),
        truncated=torch.tensor([True, False, True]),
        input_truncated=torch.tensor([False, False, True]),
        temperature=torch.tensor([1.0, 1.0, 0.5]),
        prompt_length=2,
        texts=texts,
    )


def test_rationale_fields_come_from_the_sequence():
    batch = _batch(["a", "a", "b"])
    assert batch.rationale_ids.tolist() == [[6, 7], [8, 0], [9, 9]]
    assert batch.rationale_mask.tolist() == [[True, True], [True, False], [True, True]]
    assert batch.rationale_lengths.tolist() == [2, 1, 2] and len(batch) == 3


def test_take_indexes_every_per_row_field_and_keeps_the_rest():
    batch = _batch(["a", "a", "b"])
    taken = batch.take(torch.tensor([2, 0]))
    assert taken.sequence_ids.tolist() == [[4, 5, 9, 9], [0, 5, 6, 7]]
    assert taken.temperature.tolist() == [0.5, 1.0] and taken.texts == ["b", "a"] and taken.prompt_length == 2
    assert _batch([]).take(torch.tensor([1])).texts == []  # no texts recorded: still none


def test_select_trims_padding_shared_by_the_rows_it_keeps():
    picked = _batch(["a", "a", "b"]).select(torch.tensor([1]))
    assert picked.sequence_ids.tolist() == [[4, 5, 8]] and picked.prompt_length == 2
    assert picked.logprobs.tolist() == [[-3.0]] and picked.texts == ["a"]


def test_reward_inputs_share_the_base():
    inputs = RewardInputs(
        torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([False, True]),
        torch.tensor([[3, 4], [5, 0]]), torch.tensor([[True, True], [True, False]]), ["x", "y"], step=3,
    )  # fmt: skip
    taken = inputs.take(torch.tensor([1]))
    assert taken.rationale_lengths.tolist() == [1] and taken.texts == ["y"] and taken.step == 3 and len(taken) == 1
