"""Pooling: which tokens' last-layer hidden states make the embedding, and how they are averaged.

``"after_system"`` is the paper's choice: the mean over every token after the system block (user text,
template tokens, rationale including EOS). The others exist for ablations and for the "no rationale"
baseline. Every method ends with L2 normalisation, so cosine similarity is a dot product.

The rollout pools on the fly while it generates (see ``rollout.py``); ``pool_hidden`` is the plain
reference over full hidden states, used by the no-rationale path and by the equivalence tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from grace.model.prompts import Span

POOLING_SPANS: dict[str, tuple[Span, ...]] = {
    "after_system": (Span.TEMPLATE, Span.INPUT, Span.RATIONALE),
    "rationale": (Span.RATIONALE,),
    "input": (Span.INPUT,),
}
POOLING_METHODS = (*POOLING_SPANS, "last_token")


def check_pooling(method: str) -> str:
    if method not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {method!r}: use one of {list(POOLING_METHODS)}")
    return method


def pooling_mask(spans: torch.Tensor, method: str) -> torch.Tensor:
    """[B, T] bool: tokens that take part in the mean (for ``last_token``: the last real token)."""
    check_pooling(method)
    if method == "last_token":
        real = spans != Span.PAD
        # Index of the last real token works for left and right padding alike.
        positions = torch.arange(spans.shape[1], device=spans.device).expand_as(spans)
        last = torch.where(real, positions, -1).max(dim=1).values
        return positions == last.unsqueeze(1)
    wanted = torch.tensor([int(s) for s in POOLING_SPANS[method]], device=spans.device)
    return torch.isin(spans, wanted)


def pool_hidden(hidden: torch.Tensor, spans: torch.Tensor, method: str) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, H] over the pooling mask of ``spans`` [B, T], L2-normalised: [B, H] float32."""
    mask = pooling_mask(spans, method)
    # where(), not multiply: padded positions may hold NaN (fully masked attention rows).
    summed = torch.where(mask.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)
    return normalise_mean(summed, mask.sum(dim=1))


def normalise_mean(summed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """[B, H] sums over [B] token counts -> L2-normalised means. A row with no tokens is an error upstream."""
    if bool((count == 0).any()):
        raise ValueError("a sequence has no tokens to pool (e.g. pooling='rationale' without a rationale)")
    return F.normalize(summed / count.unsqueeze(-1).to(summed.dtype), dim=-1)
