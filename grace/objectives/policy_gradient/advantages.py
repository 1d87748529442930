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

``per_component_advantages`` (``algorithm.normalize=per_component``; GDPO, Liu et al. 2026, "Group reward-Decoupled
Normalization Policy Optimization", arXiv 2601.05242; offered by TRL since 2026-01 and verl since 2026-03)
baselines each reward component's contribution separately and divides it by its own standard deviation within
the same group, then sums them weighted by each component's |weight| at this step. Summing first
(``normalize=sum``, today's default) lets the component with the largest spread set the advantage alone;
per component, each moves the advantage by its weight in units of its own spread, and a component that is
constant within a group (the paper's negative and cross-group terms, official issue #4) adds exactly zero.
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "rloo", "reinforce")
NORMALIZATIONS = ("sum", "per_component")  # algorithm.normalize


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


def per_component_advantages(
    contributions: dict[str, torch.Tensor],
    weights: dict[str, float],
    key: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GDPO advantages [R] and each component's part [R] of them.

    ``contributions``: component name -> [R] float, its capped, weighted contribution to the reward
    (``RewardBreakdown.components``); ``weights``: name -> its weight at this step (a component's sign is already
    in its contribution, so |weight| scales its standardised part: 0 while a schedule holds it at 0).
    Each part is ``|w_c| * compute_advantages(x_c, key, mask, estimator, scale_by_std=True)`` for
    ``grpo`` (group mean and unbiased group std); ``rloo`` and ``reinforce`` divide their own baseline's
    residual by the same group std (the batch's for reinforce). The advantage is the sum of the parts.
    Raises ValueError for an unknown estimator or no component.
    """
    if not contributions:
        raise ValueError("per-component advantages need at least one reward component")
    parts: dict[str, torch.Tensor] = {}
    for name, contribution in contributions.items():
        scale = abs(float(weights[name]))
        if estimator == "grpo":
            standardised = compute_advantages(contribution, key, mask, estimator="grpo", scale_by_std=True, eps=eps)
        else:
            residual = compute_advantages(contribution, key, mask, estimator=estimator)
            spread = compute_advantages(contribution, key, mask, estimator="grpo" if estimator == "rloo" else estimator)
            std = _group_std(spread, torch.zeros_like(key) if estimator == "reinforce" else key, mask)
            standardised = residual / (std + eps)
        parts[name] = standardised * scale
    total = torch.stack(list(parts.values())).sum(dim=0)
    return total, parts


def _group_std(centred: torch.Tensor, key: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[R] unbiased std within each ``key`` group of the group-centred values ``centred`` [R] (masked rows only)."""
    index = torch.unique(key, return_inverse=True)[1]
    groups = int(index.max()) + 1
    squares = torch.zeros(groups, device=centred.device).scatter_add(0, index, torch.where(mask, centred.float() ** 2, 0.0))
    count = torch.zeros(groups, device=centred.device).scatter_add(0, index, mask.float())
    return (squares / (count - 1).clamp(min=1)).sqrt()[index]
