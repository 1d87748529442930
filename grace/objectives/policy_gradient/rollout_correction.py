"""Rollout/trainer mismatch: the engine's sampling log-probs against the update forward's, measured and corrected.

The rollout samples with a KV cache, a shared prefix, slot refills and (on GPUs) a compiled step; the update
recomputes the same tokens' log-probs with one full forward. In fp32 eager decoding the two agree to ~1e-5;
in bf16 or compiled decoding they do not, and the PPO ratio ``pi_train / pi_rollout`` is then off-policy
without anyone seeing it. Two pure tensor functions:

* ``mismatch_sums``: per-token statistics of ``delta = log pi_train - log pi_rollout`` on the sampled tokens,
  as sums (so micro-batches and ranks add up): |delta|, the k3 estimate of KL(pi_rollout || pi_train)
  (``exp(delta) - delta - 1``; Schulman 2020, "Approximating KL divergence"; unbiased and >= 0 for samples
  drawn from pi_rollout) and the largest ratio ``exp(delta)``.
* ``truncated_importance_weights``: truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL
  framework secretly brings you off-policy RL training"; on by default in TRL, verl's rollout correction): ``w = min(pi_train_old / pi_rollout, C)``, per token, or per sequence with the
  ratio of the whole rationale (``exp(sum_t delta_t)``) broadcast to its tokens. The PPO ratio is then taken
  against the trainer's own old log-probs and the surrogate of every token is multiplied by ``w``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CORRECTIONS = ("auto", "off", "token", "sequence")  # algorithm.rollout_correction
LEVELS = ("token", "sequence")


@dataclass
class MismatchSums:
    """Sums over the compared tokens (add them over micro-batches and ranks, then divide by ``tokens``)."""

    abs_diff: float = 0.0  # sum of |log pi_train - log pi_rollout|, nats
    kl: float = 0.0  # sum of the k3 estimates exp(delta) - delta - 1, nats
    ratio_max: float = 0.0  # the largest pi_train / pi_rollout of one token (0: no token compared)
    tokens: float = 0.0  # tokens compared

    def add(self, other: "MismatchSums") -> None:
        self.abs_diff += other.abs_diff
        self.kl += other.kl
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.tokens += other.tokens

    def metrics(self) -> dict[str, float]:
        """``rollout/logprob_mismatch_*``: means per token (abs_mean, kl), the max ratio; 0 when nothing was compared."""
        tokens = max(self.tokens, 1.0)
        return {
            "rollout/logprob_mismatch_abs_mean": self.abs_diff / tokens,
            "rollout/logprob_mismatch_kl": self.kl / tokens,
            "rollout/logprob_mismatch_ratio_max": self.ratio_max if self.tokens else 1.0,
        }


@dataclass
class Correction:
    """What a PPO update knows of the rollout engine's log-probs, and whether to correct for them."""

    rollout_logprobs: torch.Tensor  # [R, T] float32, the engine's sampling log-probs (0 on padding)
    level: str | None = None  # token | sequence: truncated importance sampling; None: no correction
    cap: float = 2.0  # C of min(pi_train_old / pi_rollout, C)
    measure: bool = False  # compare this mini-batch's forward with the rollout (before any optimizer step)
    recomputed: bool = False  # batch.logprobs holds the trainer's own old log-probs (a no-grad forward)


@torch.no_grad()
def mismatch_sums(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> MismatchSums:
    """Statistics of ``trainer_logprobs`` against ``rollout_logprobs`` ([B, T] float, nats, the same sampled
    tokens) over the tokens of ``mask`` [B, T] bool, as sums (see ``MismatchSums``)."""
    # float64: the k3 terms of near-equal log-probs are ~1e-12, which float32 rounds below zero.
    delta = torch.where(mask, trainer_logprobs.double() - rollout_logprobs.double(), 0.0)
    ratio = torch.where(mask, delta.exp(), 0.0)
    return MismatchSums(
        abs_diff=float(delta.abs().sum()),
        kl=float((delta.exp() - delta - 1.0).sum()),  # 0 off the mask: exp(0) - 0 - 1
        ratio_max=float(ratio.max()) if bool(mask.any()) else 0.0,
        tokens=float(mask.sum()),
    )


@torch.no_grad()
def truncated_importance_weights(
    trainer_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    cap: float,
    level: str = "token",
) -> torch.Tensor:
    """Weights [B, T] float32 ``min(pi_train / pi_rollout, cap)`` of the tokens of ``mask`` (1 elsewhere), from
    log-probs [B, T] of the same sampled tokens; ``level="sequence"`` uses each row's whole-rationale ratio
    ``exp(sum_t delta_t)`` for all its tokens. Raises ValueError for a cap below 1 or an unknown level."""
    if level not in LEVELS:
        raise ValueError(f"unknown importance-sampling level {level!r}: use one of {list(LEVELS)}")
    if not cap >= 1.0:
        raise ValueError(f"importance-sampling cap={cap} must be >= 1 (weights of on-policy tokens are 1)")
    delta = torch.where(mask, trainer_logprobs.float() - rollout_logprobs.float(), 0.0)
    if level == "sequence":
        delta = delta.sum(dim=1, keepdim=True).expand_as(delta)
    # Clamp the log-ratio before exp: a large mismatch must give the cap, never inf.
    weights = delta.clamp(max=float(torch.tensor(cap).log())).exp()
    return torch.where(mask, weights, 1.0)


def correction_level(setting: str, *, precision: str, compiled: bool) -> str | None:
    """The importance-sampling level ``algorithm.rollout_correction`` asks for (None: off). ``auto``: per token
    where the engine and the trainer can round differently (bf16 autocast, or compiled decoding), else off,
    where the two agree to ~1e-5 in fp32 (tested) and a correction would only cost a forward."""
    if setting not in CORRECTIONS:
        raise ValueError(f"algorithm.rollout_correction={setting!r} is not one of {list(CORRECTIONS)}")
    if setting == "auto":
        return "token" if precision != "fp32" or compiled else None
    return None if setting == "off" else setting
