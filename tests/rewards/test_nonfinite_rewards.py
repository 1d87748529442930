"""A reward component that returns NaN or an infinity is stopped at once and named: component, rollout, step."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from grace.numerics.finite import NonFiniteError, describe_values, first_nonfinite_tensors, nonfinite_rows
from grace.rewards import ComponentError, ComponentValue, NonFiniteReward, RewardInputs, build_component


def inputs(step: int = 4) -> RewardInputs:
    """Four rollouts of two examples: (query, positive) of example 0, then of example 1."""
    rows = 4
    return RewardInputs(
        embeddings=torch.nn.functional.normalize(torch.ones(rows, 3), dim=-1),
        group=torch.tensor([0, 0, 1, 1]),
        role=torch.tensor([0, 1, 0, 1]),
        truncated=torch.zeros(rows, dtype=torch.bool),
        rationale_ids=torch.zeros(rows, 2, dtype=torch.long),
        rationale_mask=torch.ones(rows, 2, dtype=torch.bool),
        texts=["q0", "p0", "q1", "a positive text of example one"],
        step=step,
    )


def constant(values):
    return lambda _inputs: torch.tensor(values)


@pytest.mark.parametrize(
    "values, row, shown",
    [
        ([0.0, 0.0, 0.0, math.nan], 3, "row 3 (nan)"),
        ([0.0, math.inf, 0.0, 0.0], 1, "row 1 (inf)"),
        ([-math.inf, 0.0, math.nan, 0.0], 0, "row 0 (-inf), row 2 (nan)"),
    ],
)
def test_a_non_finite_value_names_the_component_the_rollout_and_the_step(monkeypatch, values, row, shown):
    component = build_component("judge", target="math.floor")  # a resolvable target; the function is swapped below
    component = type(component)(component.name, constant(values), "my_rewards.judge")
    with pytest.raises(NonFiniteReward) as caught:
        component.evaluate(inputs(step=4))
    message = str(caught.value)
    assert "reward component 'judge' (my_rewards.judge)" in message and "at step 4" in message and shown in message
    group, role = [0, 0, 1, 1][row], ["query", "positive"][row % 2]
    assert f"the first is rollout {row} of example {group}, role {role}" in message
    assert isinstance(caught.value, ComponentError) and isinstance(caught.value, NonFiniteError)


def test_a_non_finite_part_of_a_component_is_named_as_its_part():
    component = build_component("judge", target="math.floor")
    parts = ComponentValue(torch.zeros(4), {"confidence": torch.tensor([0.0, 0.0, math.nan, 0.0])})
    component = type(component)(component.name, lambda _inputs: parts, "my_rewards.judge")
    with pytest.raises(NonFiniteReward, match=r"'judge' \(my_rewards.judge\) part 'confidence'.*row 2 \(nan\)"):
        component.evaluate(inputs())


def test_finite_values_pass_unchanged():
    component = build_component("judge", target="math.floor")
    component = type(component)(component.name, constant([1.0, -2.0, 3.0, 1e30]), "my_rewards.judge")
    assert torch.equal(component.evaluate(inputs()).value, torch.tensor([1.0, -2.0, 3.0, 1e30]))


def test_the_errors_survive_pickling_with_their_message():
    for error in (NonFiniteReward("reward component 'judge' returned nan"), NonFiniteError("a NaN")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_the_locating_helpers_on_hand_made_tensors():
    values = torch.tensor([[0.0, 1.0], [math.nan, 0.0], [0.0, 0.0], [0.0, -math.inf]])
    assert nonfinite_rows(values) == [1, 3]
    assert nonfinite_rows(torch.tensor([1.0, 2.0])) == []
    assert describe_values(torch.tensor([math.nan, 1.0, math.inf, math.nan, math.nan]), [0, 2, 3, 4]) == (
        "row 0 (nan), row 2 (inf), row 3 (nan) and 1 more"
    )
    named = [("a", torch.ones(2)), ("b", torch.tensor([math.nan])), ("c", torch.tensor([1, 2])), ("d", torch.tensor([math.inf]))]
    assert first_nonfinite_tensors(named) == (["b", "d"], 2)
    assert first_nonfinite_tensors(named, limit=1) == (["b"], 2)
