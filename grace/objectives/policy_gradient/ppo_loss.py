"""The policy-gradient loss: PPO clipped surrogate with optional KL to a reference and entropy bonus.

``ppo_loss`` is a pure function of tensors (the log-probs come from ``logprobs.policy_logprobs``). Aggregation:

* ``token-mean``: every rationale token in the batch weighs the same (long rationales weigh more);
* ``sequence-mean``: mean over each rationale's tokens, then over rationales;
* ``constant`` (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783; TRL's ``loss_type="dr_grpo"``, verl's
  ``seq-mean-token-sum-norm``): the sum over every rationale token divided by a constant, the maximal
  rationale length times the number of rationales, so neither a long nor a short rationale weighs more
  per token and the normaliser does not depend on what the policy writes.

``normaliser`` lets gradient accumulation divide by the whole batch's token (or sequence, or
sequence x max-length) count, so micro-batching does not change the gradient.

``importance_weights`` ([B, T], detached) multiply the per-token surrogate: truncated importance sampling
against the rollout engine's log-probs (``rollout_correction``). None leaves the loss bit for bit as without.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token-mean", "sequence-mean", "constant")
KL_ESTIMATORS = ("k1", "k3")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what backward() is called on
    policy_loss: torch.Tensor  # scalar, the clipped surrogate alone
    clip_fraction: torch.Tensor  # scalar, share of tokens where clipping was active
    kl: torch.Tensor  # scalar, mean KL estimate to the reference (0 when not computed)
    entropy: torch.Tensor  # scalar, mean entropy (0 when not computed)
    ratio_max: torch.Tensor  # scalar, largest probability ratio (1 on-policy)


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token-mean",
    normaliser: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    importance_weights: torch.Tensor | None = None,
) -> LossOutput:
    """PPO loss for B rationales: ``logprobs``, ``old_logprobs``, ``mask`` [B, T]; ``advantages`` [B].

    ``normaliser`` defaults to this batch's token count (token-mean), sequence count (sequence-mean) or
    B x T, the padded width standing for the maximal length (constant). ``importance_weights`` [B, T]:
    per-token factors of the clipped surrogate (not of the KL or entropy terms), e.g. truncated importance
    sampling weights; None: no factor. Raises ValueError for an unknown aggregation or KL estimator.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}: use one of {list(AGGREGATIONS)}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}: use one of {list(KL_ESTIMATORS)}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs reference log-probs")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs entropies (policy_logprobs(..., entropy='trained'))")
    weight = mask.float()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    ratio = log_ratio.exp()
    advantage = advantages.unsqueeze(1).to(logprobs.dtype)
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if importance_weights is not None:
        per_token = per_token * importance_weights.detach().to(per_token.dtype)

    def aggregate(values: torch.Tensor) -> torch.Tensor:
        if aggregation == "token-mean":
            return (values * weight).sum() / (normaliser if normaliser is not None else weight.sum().clamp(min=1))
        if aggregation == "constant":
            default = float(values.shape[0] * values.shape[1])
            return (values * weight).sum() / (normaliser if normaliser is not None else max(default, 1.0))
        per_sequence = (values * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)
        return per_sequence.sum() / (normaliser if normaliser is not None else max(values.shape[0], 1))

    policy_loss = aggregate(per_token)
    loss = policy_loss
    kl = logprobs.new_tensor(0.0)
    if ref_logprobs is not None:
        delta = torch.where(mask, ref_logprobs - logprobs, 0.0)
        per_token_kl = -delta if kl_estimator == "k1" else delta.exp() - delta - 1.0
        kl = aggregate(per_token_kl)
        loss = loss + kl_coef * kl
    mean_entropy = logprobs.new_tensor(0.0)
    if entropy is not None:
        mean_entropy = aggregate(entropy)
        loss = loss - entropy_coef * mean_entropy
    with torch.no_grad():
        clip_active = (clipped > unclipped) & mask
        clip_fraction = clip_active.float().sum() / weight.sum().clamp(min=1)
        ratio_max = torch.where(mask, ratio, 0.0).max() if bool(mask.any()) else ratio.new_tensor(1.0)
    return LossOutput(loss, policy_loss.detach(), clip_fraction, kl.detach(), mean_entropy.detach(), ratio_max.detach())
