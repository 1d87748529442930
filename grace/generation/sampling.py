"""Choosing the next token: greedy or temperature / nucleus sampling, with per-row settings and seeds.

Every row carries its own temperature and top_p (queries and positives are sampled differently in one
batch) and its own random stream, so a seeded rationale for a text does not depend on which other
texts share its batch, up to floating-point rounding: batch layouts change logits by ~1e-7, which can
swap near-tied tokens (seen with nucleus sampling on a random model, whose distribution is nearly flat).
Sampling is by inverse CDF: one uniform number per row and step.

The log-probability returned is that of the temperature-scaled distribution ``softmax(logits / T)``
(``T = 1`` for greedy rows), before nucleus truncation. That is the distribution the policy loss
evaluates, so on-policy ratios start at exactly one up to floating-point error.
"""
from __future__ import annotations

import hashlib

import torch


def derived_seed(key: str) -> int:
    """A stable 63-bit seed for ``key`` (blake2b; Python's ``hash()`` changes between processes): every
    per-text, per-row and per-step random stream of the framework is seeded through this one function."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def temperature_scaled(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits / T [B, ..., V] in float32; ``temperature`` [B] broadcasts over the leading axis.

    Rows with T <= 0 (greedy) use T = 1.
    """
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    return logits.float() / t.view(-1, *([1] * (logits.dim() - 1)))


def scaled_log_probs(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T) [B, ..., V] in float32: the distribution a row samples from."""
    return torch.log_softmax(temperature_scaled(logits, temperature), dim=-1)


def row_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per row. Cheap: each step draws a single number from each."""
    generators = []
    for seed in seeds:
        generator = torch.Generator()
        generator.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF)
        generators.append(generator)
    return generators


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token [B] and its log-probability [B] for logits [B, V]; ``temperature``, ``top_p`` [B].

    Each row draws one number from its generator per call when any row of the call samples, so a
    sampled row's stream advances once per token, whichever rows share its call.
    """
    sampled = temperature > 0
    if not bool(sampled.any()):
        # All greedy (every embedding by default): the argmax of the logits, and a log-prob from one
        # logsumexp, instead of writing a [B, V] log-softmax to read one value per row.
        logits = logits.float()
        tokens = logits.argmax(dim=-1)
        chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return tokens, chosen - torch.logsumexp(logits, dim=-1)
    log_probs = scaled_log_probs(logits, temperature)
    probs = log_probs.exp()
    uniform = torch.cat([torch.rand(1, generator=g) for g in generators]).to(logits.device)
    sampled_tokens = _inverse_cdf(probs, uniform)
    nucleus = sampled & (top_p < 1)
    if bool(nucleus.any()):  # sorting the vocabulary is the expensive part: only for nucleus rows
        rows = torch.nonzero(nucleus).flatten()
        sorted_probs, order = probs[rows].sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p[rows].unsqueeze(-1).float()
        index = _inverse_cdf(sorted_probs.masked_fill(outside, 0.0), uniform[rows])
        sampled_tokens[rows] = order.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    tokens = torch.where(sampled, sampled_tokens, log_probs.argmax(dim=-1))
    return tokens, log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index [B] where the cumulative mass of ``probs`` [B, V] first reaches ``uniform`` [B] of the total."""
    cdf = probs.cumsum(dim=-1)
    target = (uniform * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1).squeeze(-1)
