"""Advantages: rewards [R] -> how much better each rollout did than a baseline.

Baselines are computed per *advantage group*: the trainer passes ``key = group * 3 + role`` so the k
rollouts of one text in one role are compared with each other (a query's InfoNCE score and a
positive's are on different scales and must not share a baseline). Rollouts outside ``mask`` (not
trained) get zero advantage and do not enter any baseline.

* ``grpo``: reward minus the group mean, optionally divided by the group std (the paper does not divide).
* ``rloo``: reward minus the mean of the *other* rollouts of the group (leave-one-out).
* ``reinforce``: reward minus the mean over the whole batch (one group).

A group whose rewards are all equal gets exactly zero advantage, never NaN or rounding noise; so does
a group of one under GRPO and RLOO (no baseline exists without a second sample).
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo", "reinforce")


def compute_advantages(
    rewards: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "grpo",
    scale_by_std: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages [R] for ``rewards`` [R] grouped by ``key`` [R], zero outside ``mask`` [R] (bool)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}: use one of {list(ESTIMATORS)}")
    rewards = rewards.float()
    if estimator == "reinforce":
        key = torch.zeros_like(key)
    index = torch.unique(key, return_inverse=True)[1]
    groups = int(index.max()) + 1

    def per_group(values: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """Reduce ``values`` [R] over the masked rows of each group, broadcast back to [R]."""
        start = {"sum": 0.0, "amax": float("-inf"), "amin": float("inf")}[reduce]
        fill = torch.full_like(values, start)
        out = torch.full((groups,), start, device=values.device)
        return out.scatter_reduce(0, index, torch.where(mask, values, fill), reduce=reduce)[index]

    count = per_group(torch.ones_like(rewards))
    mean = per_group(rewards) / count.clamp(min=1)
    centred = rewards - mean
    if estimator == "rloo":
        # r_i - mean_{j != i} r_j, written without a loop.
        advantages = centred * count / (count - 1).clamp(min=1)
    elif estimator == "grpo" and scale_by_std:
        std = (per_group(centred**2) / (count - 1).clamp(min=1)).sqrt()  # unbiased, as in GRPO
        advantages = centred / (std + eps)
    else:
        advantages = centred
    varies = per_group(rewards, "amax") > per_group(rewards, "amin")
    keep = mask & varies & (count > 1)
    return torch.where(keep, advantages, torch.zeros_like(advantages))
