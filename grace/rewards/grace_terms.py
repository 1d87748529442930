"""The GRACE reward terms, both variants: embeddings of a batch of rollouts -> one scalar per rollout,
with every term kept apart. In the composed reward (``grace.rewards.compose``) they are the built-in
component ``grace``; ``compute_rewards`` is also the entry point other code and outside users build on::

    compute_rewards(embeddings [R, H], group [R], role [R], truncated [R], *, variant, mode,
                    tau=0.1, w_cluster=0.2, w_cross=0.2, rank_truncated_last=True) -> RewardBreakdown

``group`` says which training example a rollout belongs to; ``role`` is 0 query, 1 positive, 2 negative
(unsupervised mode has no negatives; its "query" is a second view of the same sentence). Embeddings are
L2-normalised here (a no-op for the rollout's, which already are), so dot products are cosines. Every
term is computed for all rollouts at once with matrix products and scatter operations;
``tests/test_rewards.py`` checks them against plain loops.

``variant="paper"`` reproduces the official GRACE reward (arXiv 2510.04506). For positive rollout i of
group g, with q_g the group's query and n_g its negative (mean embeddings, re-normalised, when a role
has several rollouts)::

    supervised:   R = (1/tau) [cos(q_g, p_i) - cos(q_g, n_g) + w_c mean_{j!=i in g} cos(p_i, p_j)
                               - w_x mean_{g'!=g} max_{k in g'} cos(q_g, p_k)]
    unsupervised: R = (1/tau) [cos(q_g, p_i) + w_c mean_{j!=i in g} cos(p_i, p_j)
                               - w_x mean_{g'!=g} cos(p_i, q_g')]

Only positives are trained; a truncated rationale (no EOS) gets R = -1 instead. In supervised mode the
negative and cross terms are the same for every rollout of a group, so the GRPO baseline removes them:
they train nothing. ``within_group_std`` makes that visible in the logs.

``variant="contrastive"`` (our default) trains every role and gives each rollout a reward in which
every term depends on its own embedding. With Q, P, N the per-group mean embeddings of each role
(re-normalised), for rollout e_i of group g:

* ``contrastive``: the InfoNCE log-probability that e_i picks its true partner among in-batch
  candidates. A query picks P_g among all P and N; a positive (and an unsupervised second view) picks
  Q_g among all Q; a negative is scored by how well it lets its query prefer the positive:
  log sigmoid((cos(Q_g, P_g) - cos(Q_g, e_i)) / tau).
* ``cluster``: (w_c / tau) mean cos(e_i, e_j) over the other rollouts of the same text and role.
* ``cross``: -(w_x / tau) mean over other groups g' of cos(e_i, partner_g'), partner = P for queries,
  Q for positives and negatives: pushes a rollout away from other examples.

A truncated rollout's reward is shifted down by the batch's reward range plus one: worse than every
finished rationale (the paper's fixed -1 can beat a poor InfoNCE score, which is below zero), yet still
ordered by its embedding terms, so a group whose rollouts are all truncated keeps a learning signal.
In both variants ``total`` equals the sum of ``terms`` except on rows where the truncation rule applies.

``rank_truncated_last=False`` switches the truncation rule off in both variants: a truncated rollout is
scored by its embedding terms like a finished one. The rule is what teaches a policy to finish its
rationale within ``max_new_tokens``; with a budget much shorter than the rationales the model writes (most
cut at the limit, e.g. 32 tokens on CPU) it is mostly a reward for writing shorter rationales
(experiments/quality/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grace.data.roles import Role
from grace.rewards.types import ComponentValue, RewardBreakdown, RewardInputs

VARIANTS = ("paper", "contrastive")
MODES = ("supervised", "unsupervised")
PAPER_TRUNCATION_REWARD = -1.0


def compute_rewards(
    embeddings: torch.Tensor,
    group: torch.Tensor,
    role: torch.Tensor,
    truncated: torch.Tensor,
    *,
    variant: str = "contrastive",
    mode: str = "supervised",
    tau: float = 0.1,
    w_cluster: float = 0.2,
    w_cross: float = 0.2,
    rank_truncated_last: bool = True,
) -> RewardBreakdown:
    """Rewards for R rollouts; see the module docstring for the formulas and the truncation rule."""
    _check_inputs(embeddings, group, role, truncated, variant, mode, tau)
    # Every term below is a dot product read as a cosine: normalise here rather than trust the caller.
    e = F.normalize(embeddings.float(), dim=-1)
    group_index = torch.unique(group, return_inverse=True)[1]
    structure = _GroupStructure.build(e, group_index, role, mode)
    if variant == "paper":
        terms, trained = _paper_terms(e, structure, role, mode, w_cluster, w_cross)
        total = torch.stack(list(terms.values())).sum(dim=0) / tau
        terms = {name: value / tau for name, value in terms.items()}
        if rank_truncated_last:
            total = torch.where(truncated & trained, torch.full_like(total, PAPER_TRUNCATION_REWARD), total)
    else:
        terms = _contrastive_terms(e, structure, role, tau, w_cluster, w_cross)
        trained = trained_rows(role, variant)
        total = torch.stack(list(terms.values())).sum(dim=0)
        # Shift truncated rollouts below every finished one; they stay ordered among themselves, so a
        # group whose rollouts are all truncated still learns which of them embedded best.
        if rank_truncated_last:
            shift = total.max() - total.min() + 1.0
            total = torch.where(truncated, total - shift, total)
    return RewardBreakdown(total=total, terms=terms, trained=trained)


def grace_component(
    inputs: RewardInputs,
    *,
    variant: str,
    mode: str,
    tau: float,
    w_cluster: float,
    w_cross: float,
    rank_truncated_last: bool = True,
) -> ComponentValue:
    """The built-in component ``grace``: ``compute_rewards`` on the batch's embeddings, its truncation rule
    included; its terms are logged under their own names (``reward/positive_mean``, ...). The composed
    reward passes ``variant``, ``tau``, ``w_cluster``, ``w_cross``, ``rank_truncated_last`` from ``reward.*``
    and ``mode``."""
    rewards = compute_rewards(
        inputs.embeddings, inputs.group, inputs.role, inputs.truncated,
        variant=variant, mode=mode, tau=tau, w_cluster=w_cluster, w_cross=w_cross,
        rank_truncated_last=rank_truncated_last,
    )  # fmt: skip
    return ComponentValue(rewards.total, rewards.terms)


def trained_rows(role: torch.Tensor, variant: str) -> torch.Tensor:
    """[R] bool, rollouts that receive policy gradient: the positives in the paper's recipe, all in ours."""
    return role == Role.POSITIVE if variant == "paper" else torch.ones_like(role, dtype=torch.bool)


def _check_inputs(embeddings, group, role, truncated, variant, mode, tau) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}: use one of {list(VARIANTS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {list(MODES)}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [R, H], got shape {tuple(embeddings.shape)}")
    rows = embeddings.shape[0]
    if rows == 0:
        raise ValueError("no rollouts to reward")
    for name, tensor in (("group", group), ("role", role), ("truncated", truncated)):
        if tensor.shape != (rows,):
            raise ValueError(f"{name} must have shape [{rows}] to match embeddings, got {tuple(tensor.shape)}")
    if truncated.dtype != torch.bool:
        raise ValueError(f"truncated must be a bool tensor, got {truncated.dtype}")
    allowed = {Role.QUERY, Role.POSITIVE} | ({Role.NEGATIVE} if mode == "supervised" else set())
    unknown = set(role.unique().tolist()) - {int(r) for r in allowed}
    if unknown:
        raise ValueError(f"role values {sorted(unknown)} are not allowed in {mode} mode (0 query, 1 positive, 2 negative)")


@dataclass
class _GroupStructure:
    """Per-group, per-role sums and means, shared by all terms. G groups, H dims, roles indexed by Role."""

    index: torch.Tensor  # [R] long, group index 0..G-1
    sums: torch.Tensor  # [3, G, H] sum of the embeddings of each role in each group
    counts: torch.Tensor  # [3, G] number of rollouts of each role in each group
    means: torch.Tensor  # [3, G, H] re-normalised mean embedding (zero where a role is absent)
    has_negatives: bool

    @classmethod
    def build(cls, e: torch.Tensor, index: torch.Tensor, role: torch.Tensor, mode: str) -> "_GroupStructure":
        groups = int(index.max()) + 1
        slot = role * groups + index  # one bucket per (role, group)
        sums = torch.zeros(3 * groups, e.shape[1], device=e.device).index_add_(0, slot, e).view(3, groups, -1)
        counts = torch.zeros(3 * groups, device=e.device).index_add_(0, slot, torch.ones_like(e[:, 0])).view(3, groups)
        required = (Role.QUERY, Role.POSITIVE) + ((Role.NEGATIVE,) if mode == "supervised" else ())
        for r in required:
            missing = torch.nonzero(counts[r] == 0).flatten().tolist()
            if missing:
                raise ValueError(f"{mode} rewards need a {r.name.lower()} rollout in every group; group(s) {missing} have none")
        return cls(index, sums, counts, F.normalize(sums, dim=-1), mode == "supervised")

    def same_role_mean_cos(self, e: torch.Tensor, role: torch.Tensor) -> torch.Tensor:
        """[R] mean cos(e_i, e_j) over the other rollouts of i's group and role (0 when there are none)."""
        others = self.counts[role, self.index] - 1
        similarity = (e * self.sums[role, self.index]).sum(-1) - (e * e).sum(-1)
        return torch.where(others > 0, similarity / others.clamp(min=1), torch.zeros_like(similarity))

    def other_groups_mean_cos(self, e: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        """[R] mean over groups g' != g_i of cos(e_i, partner[g']), partner [G, H] (0 with a single group)."""
        groups = partner.shape[0]
        total = e @ partner.sum(dim=0) - (e * partner[self.index]).sum(-1)
        return total / max(groups - 1, 1)


def _paper_terms(e, s: _GroupStructure, role, mode, w_cluster, w_cross):
    """The official terms, unscaled by 1/tau, zero on rollouts that are not trained (non-positives)."""
    positive = role == Role.POSITIVE
    q = s.means[Role.QUERY]
    terms = {"positive": (e * q[s.index]).sum(-1)}
    if mode == "supervised":
        terms["negative"] = -(q * s.means[Role.NEGATIVE]).sum(-1)[s.index]
    terms["cluster"] = w_cluster * s.same_role_mean_cos(e, role)
    if mode == "supervised":
        terms["cross"] = -w_cross * _mean_other_group_max(q, e, s.index, positive)[s.index]
    else:
        terms["cross"] = -w_cross * s.other_groups_mean_cos(e, q)
    return {name: torch.where(positive, value, torch.zeros_like(value)) for name, value in terms.items()}, positive


def _mean_other_group_max(q: torch.Tensor, e: torch.Tensor, index: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """[G] for each group g: mean over g' != g of max over members k of g' of cos(q_g, e_k)."""
    groups = q.shape[0]
    similarity = (q @ e.T).masked_fill(~member.unsqueeze(0), float("-inf"))  # [G, R]
    best = torch.full((groups, groups), float("-inf"), device=e.device)
    best = best.scatter_reduce(1, index.unsqueeze(0).expand(groups, -1), similarity, reduce="amax")  # [G, G']
    others = ~torch.eye(groups, dtype=torch.bool, device=e.device) & torch.isfinite(best)
    return torch.where(others, best, 0.0).sum(dim=1) / others.sum(dim=1).clamp(min=1)


def _contrastive_terms(e, s: _GroupStructure, role, tau, w_cluster, w_cross):
    q, p = s.means[Role.QUERY], s.means[Role.POSITIVE]
    is_query, is_negative = role == Role.QUERY, role == Role.NEGATIVE
    g = s.index

    # Queries pick their positive among every positive and negative mean of the batch.
    query_candidates = torch.cat([p, s.means[Role.NEGATIVE]]) if s.has_negatives else p
    query_logits = e @ query_candidates.T / tau  # [R, G or 2G]
    query_score = query_logits.gather(1, g.unsqueeze(1)).squeeze(1) - query_logits.logsumexp(dim=1)
    # Positives pick their query among every query mean.
    positive_logits = e @ q.T / tau  # [R, G]
    positive_score = positive_logits.gather(1, g.unsqueeze(1)).squeeze(1) - positive_logits.logsumexp(dim=1)
    # Negatives: probability that their query prefers the true positive over them.
    negative_score = F.logsigmoid(((q[g] * p[g]).sum(-1) - (q[g] * e).sum(-1)) / tau)
    contrastive = torch.where(is_query, query_score, torch.where(is_negative, negative_score, positive_score))

    partner_cross = torch.where(is_query, s.other_groups_mean_cos(e, p), s.other_groups_mean_cos(e, q))
    return {
        "contrastive": contrastive,
        "cluster": w_cluster / tau * s.same_role_mean_cos(e, role),
        "cross": -w_cross / tau * partner_cross,
    }
