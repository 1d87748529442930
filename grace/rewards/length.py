"""Built-in component ``length``: a cost for every rationale token beyond a budget.

    value_i = -max(0, L_i - budget)        L_i: rationale tokens of rollout i, EOS included

The component's weight is the price of one extra token. It answers the drift users of the official code
report (rationales that double in length over training) without touching rationales within the budget.
"""
from __future__ import annotations

import torch

from grace.rewards.types import RewardInputs


def length_cost(inputs: RewardInputs, *, budget: int) -> torch.Tensor:
    """[R] float32, minus the tokens each rationale has beyond ``budget`` (0 within it)."""
    if not isinstance(budget, int) or budget < 0:
        raise ValueError(f"params.budget={budget!r} must be a whole number of tokens >= 0")
    return -(inputs.rationale_lengths - budget).clamp(min=0).float()
