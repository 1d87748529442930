"""The policy-gradient loss: PPO clipped surrogate with optional KL to a reference and entropy bonus.

``policy_logprobs`` runs the policy over finished rollouts (with gradients) and returns the
log-probability of each rationale token under the same temperature-scaled distribution the rollout
sampled from, so on-policy ratios start at one. Logits are computed only at rationale positions.

``ppo_loss`` is a pure function of tensors. Aggregation:

* ``token-mean``: every rationale token in the batch weighs the same (long rationales weigh more);
* ``sequence-mean``: mean over each rationale's tokens, then over rationales.

``normaliser`` lets gradient accumulation divide by the whole batch's token (or sequence) count, so
micro-batching does not change the gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grace.forward import hidden_and_logits, position_ids
from grace.pooling import pool_hidden
from grace.rollout import RolloutBatch
from grace.sampling import temperature_scaled

AGGREGATIONS = ("token-mean", "sequence-mean")
KL_ESTIMATORS = ("k1", "k3")


ENTROPY_MODES = ("none", "logged", "trained")
_ENTROPY_ROWS = 4  # rows per chunk when entropy is only logged: bounds the extra [rows, T, V] softmax


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # [B, T] float32, log-prob of each rationale token (0 on padding)
    entropy: torch.Tensor | None  # [B, T] float32, entropy of the next-token distribution (0 on padding), if asked for
    embeddings: torch.Tensor | None = None  # [B, H] float32, L2-normalised pooled hidden states (with gradient), if asked for


def policy_logprobs(model: torch.nn.Module, batch: RolloutBatch, *, entropy: str = "none", pooling: str | None = None) -> PolicyOutput:
    """Log-probs (and optionally entropies) of the rationale tokens of ``batch`` under ``model`` (a causal LM,
    or its ``LMForward`` wrapped for data-parallel training: ``grace.forward.hidden_and_logits``).

    ``pooling``: also pool the same forward's last-layer hidden states over ``batch.spans`` with that
    method (``grace.pooling``), with gradient: the embedding the rollout pooled while generating, now
    differentiable (GRACE's embedding loss).

    ``entropy``: ``"none"``; ``"logged"``, computed without gradient in small row chunks (a metric);
    ``"trained"``, with gradient, for an entropy bonus. Only ``"trained"`` keeps a second [B, T, V]
    tensor alive through backward; at the paper's scale (16 x 2048 tokens x a 150k vocabulary) each such
    tensor is ~20 GB, which is why the token log-probs are a gather minus a logsumexp rather than a full
    log-softmax.
    """
    if entropy not in ENTROPY_MODES:
        raise ValueError(f"unknown entropy mode {entropy!r}: use one of {list(ENTROPY_MODES)}")
    device = next(model.parameters()).device
    ids, mask = batch.sequence_ids.to(device), batch.attention_mask.to(device)
    width = ids.shape[1] - batch.prompt_length
    # The state at position t predicts token t + 1: rationale token j is predicted from P - 1 + j.
    hidden, logits = hidden_and_logits(model, ids, mask, position_ids(mask), batch.prompt_length - 1, width)
    temperature = batch.temperature.to(device)
    # The distribution the rollout sampled from; at T = 1 float32 logits are used as they are, not copied.
    scaled = logits.float() if bool((temperature == 1).all()) else temperature_scaled(logits, temperature)  # [B, T, V]
    targets = batch.rationale_ids.to(device).unsqueeze(-1)
    token_logprobs = scaled.gather(-1, targets).squeeze(-1) - scaled.logsumexp(dim=-1)
    real = batch.rationale_mask.to(device)
    entropies = None
    if entropy == "trained":
        entropies = _entropy(scaled)
    elif entropy == "logged":
        with torch.no_grad():
            entropies = torch.cat([_entropy(part) for part in scaled.split(_ENTROPY_ROWS)])
    if entropies is not None:
        entropies = torch.where(real, entropies, 0.0)
    embeddings = pool_hidden(hidden, batch.spans.to(device), pooling) if pooling is not None else None
    return PolicyOutput(torch.where(real, token_logprobs, 0.0), entropies, embeddings)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [..] of softmax(``logits`` [.., V]): logsumexp(z) - sum softmax(z) z."""
    return logits.logsumexp(dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


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
) -> LossOutput:
    """PPO loss for B rationales: ``logprobs``, ``old_logprobs``, ``mask`` [B, T]; ``advantages`` [B].

    ``normaliser`` defaults to this batch's token count (token-mean) or sequence count (sequence-mean).
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

    def aggregate(values: torch.Tensor) -> torch.Tensor:
        if aggregation == "token-mean":
            return (values * weight).sum() / (normaliser if normaliser is not None else weight.sum().clamp(min=1))
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
