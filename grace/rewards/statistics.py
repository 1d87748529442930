"""Statistics of per-rollout values that the logs and the guards share."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def within_group_std(values: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over groups of the (population) std of ``values`` [R] within each group of ``key`` [R].

    Only rows where ``mask`` is true count. A term with zero within-group spread gives zero GRPO
    advantage: it trains nothing, however large its mean.
    """
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask
    if not bool(mask.any()):
        return values.new_tensor(0.0)
    index = torch.unique(key[mask], return_inverse=True)[1]
    groups = int(index.max()) + 1
    # Shifted by each group's first value: a constant group then sums exact zeros, so its std is exactly 0
    # (sum / count of equal floats can miss the value by an ulp, which would hide a dead term).
    kept = values[mask].float()
    rows = torch.arange(len(kept), device=values.device)
    first = torch.full((groups,), len(kept), device=values.device).scatter_reduce(0, index, rows, reduce="amin")
    shifted = kept - kept[first][index]
    count = torch.zeros(groups, device=values.device).index_add_(0, index, torch.ones_like(shifted))
    mean = torch.zeros_like(count).index_add_(0, index, shifted) / count
    square = torch.zeros_like(count).index_add_(0, index, (shifted - mean[index]) ** 2)
    return (square / count).sqrt().mean()


def different_text_mean_cos(embeddings: torch.Tensor, texts: Sequence[str]) -> float:
    """Mean cosine between the embeddings [R, H] (L2-normalised) of rows whose texts differ; NaN without such pairs."""
    index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    ids = torch.tensor([index[text] for text in texts], device=embeddings.device)
    different = ids.unsqueeze(0) != ids.unsqueeze(1)
    if not bool(different.any()):
        return math.nan
    e = embeddings.float()
    return float((e @ e.T)[different].mean())
