"""The policy's log-probs of finished rollouts: one forward with gradient, logits at rationale positions only.

``policy_logprobs`` runs the policy over finished rollouts and returns the log-probability of each rationale
token under the same temperature-scaled distribution the rollout sampled from, so on-policy ratios start at
one; optionally the entropies and the pooled embeddings of the same forward (GRACE's embedding loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grace.generation.rollout import RolloutBatch
from grace.generation.sampling import temperature_scaled
from grace.model.forward import hidden_and_logits, position_ids
from grace.model.pooling import pool_hidden

ENTROPY_MODES = ("none", "logged", "trained")
_ENTROPY_ROWS = 4  # rows per chunk when entropy is only logged: bounds the extra [rows, T, V] softmax


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # [B, T] float32, log-prob of each rationale token (0 on padding)
    entropy: torch.Tensor | None  # [B, T] float32, entropy of the next-token distribution (0 on padding), if asked for
    embeddings: torch.Tensor | None = None  # [B, H] float32, L2-normalised pooled hidden states (with gradient), if asked for


def policy_logprobs(model: torch.nn.Module, batch: RolloutBatch, *, entropy: str = "none", pooling: str | None = None) -> PolicyOutput:
    """Log-probs (and optionally entropies) of the rationale tokens of ``batch`` under ``model`` (a causal LM,
    or its ``LMForward`` wrapped for data-parallel training: ``grace.model.forward.hidden_and_logits``).

    ``pooling``: also pool the same forward's last-layer hidden states over ``batch.spans`` with that
    method (``grace.model.pooling``), with gradient: the embedding the rollout pooled while generating, now
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
