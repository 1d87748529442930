"""What a reward component reads and returns, and what the composed reward hands to the trainer.

R rollouts of one step, T rationale positions. Every tensor is indexed by rollout row, in the order the
rollout produced them; ``group`` and ``role`` say which text of which training example a row belongs to.
The inputs are plain tensors and lists, so a distributed trainer can gather them across ranks first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from grace.model.rows import RationaleRows


@dataclass
class RewardInputs(RationaleRows):
    """One step's rollouts, as every reward component sees them."""

    embeddings: torch.Tensor  # [R, H] float32, L2-normalised pooled embeddings
    group: torch.Tensor  # [R] long, training-example index
    role: torch.Tensor  # [R] long, grace.generation.rollout.Role: 0 query, 1 positive, 2 negative
    truncated: torch.Tensor  # [R] bool, the rationale hit its length limit without EOS
    rationale_ids: torch.Tensor  # [R, T] long, generated token ids (EOS included); padding where the mask is False
    rationale_mask: torch.Tensor  # [R, T] bool, real rationale tokens
    texts: list[str]  # [R] input text of each rollout
    step: int = 0  # training step, counted from 1 (0: outside training)
    decode: Callable[[list[int]], str] | None = None  # token ids -> text, behind `rationales`

    @cached_property
    def rationales(self) -> list[str]:
        """[R] each rationale decoded without special tokens; decoded on first use, once."""
        if self.decode is None:
            raise ValueError("these reward inputs carry no decode function, so rationales cannot be read as text")
        return [self.decode(row[keep].tolist()) for row, keep in zip(self.rationale_ids, self.rationale_mask)]


@dataclass
class ComponentValue:
    """A component's value with named parts, logged as ``reward/<part>_*`` (the GRACE terms, the parts of
    the degenerate-rationale penalty). A component may also return a bare [R] tensor."""

    value: torch.Tensor  # [R] float32, the component's value before its weight and cap
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # part name -> [R] float32


@dataclass
class RewardBreakdown:
    total: torch.Tensor  # [R] float32, the reward each rollout is trained on
    terms: dict[str, torch.Tensor]  # name -> [R] float32, the GRACE terms (and other components' parts)
    trained: torch.Tensor  # [R] bool, rollouts that receive policy gradient
    # The composed reward: component name -> [R] float32 contribution (weight x value, capped); `total` is
    # their sum. Empty from `compute_rewards`, whose `total` is the GRACE reward alone.
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # scheduled component's name -> its weight at this step
    capped: dict[str, torch.Tensor] = field(default_factory=dict)  # component name -> [R] bool, its cap clipped the row
