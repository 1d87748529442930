"""User reward components for the tests, named by dotted path (``reward_helpers.<name>``) as a user would."""
from __future__ import annotations

import torch

from grace.rewards import RewardInputs


def constant(inputs: RewardInputs, *, value: float = 1.0) -> torch.Tensor:
    return torch.full((len(inputs),), value)


def rationale_words(inputs: RewardInputs) -> list[float]:
    """Reads the decoded rationales and returns a plain list: both are part of the contract."""
    return [float(len(rationale.split())) for rationale in inputs.rationales]


def wrong_shape(inputs: RewardInputs) -> torch.Tensor:
    return torch.zeros(len(inputs), 2)


def not_numbers(inputs: RewardInputs) -> list[str]:
    return ["high"] * len(inputs)


NOT_CALLABLE = 3
