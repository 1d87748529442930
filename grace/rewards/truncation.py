"""Built-in component ``truncation``: -1 for every rationale cut at its length limit without EOS.

The GRACE component already ranks truncated rollouts last (each variant by its own rule); this one adds a
penalty of its own, with its own weight and cap, for runs that want truncation to cost more (or, with
weight 0, just to watch it as a component).
"""
from __future__ import annotations

import torch

from grace.rewards.types import RewardInputs


def truncation_penalty(inputs: RewardInputs) -> torch.Tensor:
    """[R] float32: -1 where the rationale was truncated, 0 elsewhere."""
    return -inputs.truncated.float()
