"""InfoNCE: each anchor embedding picks its partner among candidate embeddings; a pure tensor function.

    info_nce(anchors [N, H], candidates [M, H], targets [N], *, temperature, exclude=None) -> InfoNCEOutput

For anchor i with partner t_i (van den Oord et al. 2018, arXiv 1807.03748; SimCSE, Gao et al. 2021,
arXiv 2104.08821, eq. 1 and 5), with cosine similarities and temperature tau::

    loss_i = -log( exp(cos(a_i, c_{t_i}) / tau) / sum_{j allowed for i} exp(cos(a_i, c_j) / tau) )

Embeddings are L2-normalised here (a no-op for pooled embeddings, which already are), so dot products
are cosines. ``exclude`` [N, M] removes candidates from an anchor's denominator: a candidate whose text
equals the partner's (a false negative: the same answer in two triplets of one batch), or a block of
candidates that belongs to another kind of anchor. The loss is returned per anchor, not averaged, so a
caller that accumulates micro-batches can divide by the whole batch's anchor count.

Three objectives use it: contrastive fine-tuning (a query picks its positive among in-batch positives and
hard negatives), SimCSE (a dropout view picks the other view of its sentence) and GRACE's embedding loss
(a rollout picks its partner among the rollout's detached group means; ``grace.objectives.policy_gradient.embedding_loss``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class InfoNCEOutput:
    loss: torch.Tensor  # [N] float32, -log p(partner) of each anchor (with gradient)
    correct: torch.Tensor  # [N] bool, the partner is the anchor's most similar allowed candidate
    positive_cos: torch.Tensor  # [N] float32, cos(anchor, partner), detached
    negative_cos: torch.Tensor  # [N] float32, mean cos(anchor, allowed non-partners), detached (0 with none)


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    exclude: torch.Tensor | None = None,
) -> InfoNCEOutput:
    """Per-anchor InfoNCE loss; see the module docstring for the formula.

    ``anchors`` [N, H], ``candidates`` [M, H] (any float dtype; computed in float32), ``targets`` [N] long
    indices into ``candidates``, ``exclude`` [N, M] bool (True: not a candidate for that anchor).
    Raises ValueError on mismatched shapes, a target out of range or excluded, or a non-positive temperature.
    """
    _check(anchors, candidates, targets, temperature, exclude)
    a, c = F.normalize(anchors.float(), dim=-1), F.normalize(candidates.float(), dim=-1)
    cos = a @ c.T  # [N, M]
    logits = cos / temperature
    is_partner = F.one_hot(targets, candidates.shape[0]).bool()  # [N, M]
    allowed = torch.ones_like(is_partner) if exclude is None else ~exclude.to(cos.device)
    logits = logits.masked_fill(~allowed, float("-inf"))
    loss = logits.logsumexp(dim=1) - logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        partner_cos = cos.gather(1, targets.unsqueeze(1)).squeeze(1)
        others = allowed & ~is_partner
        # Strictly above every other allowed candidate: a tie (e.g. a collapsed encoder) does not count as right.
        best_other = cos.masked_fill(~others, float("-inf")).max(dim=1).values
        negative_cos = torch.where(others, cos, 0.0).sum(dim=1) / others.sum(dim=1).clamp(min=1)
    return InfoNCEOutput(loss, partner_cos > best_other, partner_cos.detach(), negative_cos)


def _check(anchors, candidates, targets, temperature, exclude) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"anchors [N, H] and candidates [M, H] must share H, got {tuple(anchors.shape)} and {tuple(candidates.shape)}")
    if targets.shape != (anchors.shape[0],) or targets.dtype != torch.long:
        raise ValueError(f"targets must be a long tensor of shape [{anchors.shape[0]}], got {targets.dtype} {tuple(targets.shape)}")
    if len(targets) and not bool(((targets >= 0) & (targets < candidates.shape[0])).all()):
        raise ValueError(f"targets must index the {candidates.shape[0]} candidates, got {targets.tolist()}")
    if exclude is not None:
        if exclude.shape != (anchors.shape[0], candidates.shape[0]) or exclude.dtype != torch.bool:
            raise ValueError(f"exclude must be a bool tensor of shape [{anchors.shape[0]}, {candidates.shape[0]}], got {tuple(exclude.shape)}")
        if len(targets) and bool(exclude.gather(1, targets.unsqueeze(1).to(exclude.device)).any()):
            raise ValueError("an anchor's own partner is excluded from its candidates")
