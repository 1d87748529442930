"""GRACE's embedding loss: who each rollout's pooled embedding is contrasted with.

With ``algorithm.embedding_loss_coef > 0`` the PPO update adds ``coef * InfoNCE`` of each rollout's
embedding, pooled (with gradient) from the very forward pass that computes its log-probs, against
partners taken from the rollout itself. The partners are the step's per-group role means of the
rollout embeddings (re-normalised), detached: the same structure as the contrastive reward's InfoNCE term
(``grace.rewards``), so the reward asks the policy to *write* rationales whose embeddings find their
partner, and the embedding loss asks the network to *represent* the same texts so that they do.

* a query picks its group's positive mean among every positive mean (and every negative mean, supervised);
* a positive (unsupervised: the second view) picks its group's query mean among every query mean;
* a negative has no partner of its own and takes no part (its mean is a candidate for the queries).

Because the partners are constants of the step, each row's loss depends on its own embedding only: the
rows of a mini-batch can be split into micro-batches and their gradients accumulated exactly (tested
against one full-batch backward). Which rows take part is independent of the policy gradient: rows with
zero advantage, and in the paper variant the untrained queries, are forwarded for the embedding loss
although the PPO terms ignore them (``grace.objectives.policy_gradient.ppo_update``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grace.data.roles import Role


@dataclass
class EmbeddingPartners:
    """Candidates and partner of every rollout row, for ``grace.objectives.infonce.info_nce``."""

    candidates: torch.Tensor  # [C, H] float32, detached group means: queries, positives (, negatives) by group
    targets: torch.Tensor  # [R] long, index of each row's partner in `candidates` (0 where it takes no part)
    exclude: torch.Tensor  # [R, C] bool, candidates outside a row's block (a query never picks a query)
    takes_part: torch.Tensor  # [R] bool, rows with a partner: queries and positives


def rollout_partners(embeddings: torch.Tensor, group: torch.Tensor, role: torch.Tensor, mode: str) -> EmbeddingPartners:
    """Partners of R rollouts from their embeddings [R, H], ``group`` [R] and ``role`` [R] (``Role`` values).

    ``mode``: "supervised" (negatives' means join the queries' candidates) or "unsupervised" (no negatives).
    Raises ValueError if a group lacks a query or a positive rollout.
    """
    e = F.normalize(embeddings.detach().float(), dim=-1)
    index = torch.unique(group, return_inverse=True)[1]
    groups = int(index.max()) + 1
    roles = [Role.QUERY, Role.POSITIVE] + ([Role.NEGATIVE] if mode == "supervised" else [])
    means = []
    for r in roles:
        members = role == r
        counts = torch.zeros(groups, device=e.device).index_add_(0, index[members], torch.ones_like(e[members, 0]))
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"the embedding loss needs a {r.name.lower()} rollout in every group; group(s) {missing} have none")
        sums = torch.zeros(groups, e.shape[1], device=e.device).index_add_(0, index[members], e[members])
        means.append(F.normalize(sums, dim=-1))
    candidates = torch.cat(means)  # block b holds role roles[b]'s group means, group g at b * G + g
    block = torch.arange(len(candidates), device=e.device) // groups  # [C] position of each candidate's role in `roles`
    is_query = role == Role.QUERY
    # Queries look at every block but their own; positives at the query block only.
    exclude = torch.where(is_query.unsqueeze(1), block.unsqueeze(0) == 0, block.unsqueeze(0) != 0)
    targets = torch.where(is_query, groups + index, index)  # a query's partner: its positive mean; a positive's: its query mean
    takes_part = is_query | (role == Role.POSITIVE)
    return EmbeddingPartners(candidates, torch.where(takes_part, targets, 0), exclude, takes_part)
