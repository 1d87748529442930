"""The PPO update of a GRACE step: rollouts with advantages -> optimizer updates of the policy.

PPO epochs over mini-batches of examples; each mini-batch is one optimizer update, computed in
micro-batches of rows whose losses are normalised by the mini-batch's size, so that the accumulated
gradient equals the full mini-batch gradient. The loss of a row is the PPO clipped surrogate (with
optional KL and entropy terms, ``grace.objectives.policy_gradient.ppo_loss``) plus, when ``algorithm.embedding_loss_coef > 0``, that
coefficient times the InfoNCE loss of the row's pooled embedding against its detached in-batch partners
(``grace.objectives.policy_gradient.embedding_loss``), normalised by the mini-batch's count of rows that take part in it.

Which rows are forwarded: a row with zero advantage adds nothing to the clipped surrogate and is skipped,
unless KL or entropy terms need it (it still counts in the normaliser, so the loss value is unchanged),
or it takes part in the embedding loss, which does not depend on the advantage. A row forwarded only for
the embedding loss (e.g. a query in the paper variant, which gets no policy gradient) has its PPO terms
masked out.

Under torchrun each rank holds its share of every mini-batch (``grace.distributed.ranks.local_examples``): the
normalisers are the global counts (summed over ranks), so the gradients the engine averages add up to the
one-process gradient of the global batch (``grace.distributed.parallel``: ``loss_scale``, equal micro-batch counts),
and the logged numbers are reduced over ranks.

Rollout/trainer mismatch (``grace.objectives.policy_gradient.rollout_correction``): the rollout engine's sampling
log-probs are compared with the update forward's of the same tokens before the first optimizer step (the rows of
the step's first update; every trained row when old log-probs are recomputed) and logged. With
``algorithm.rollout_correction`` on, the PPO ratio is taken against the trainer's own old log-probs (the first
forward's, detached, when the step makes one optimizer update; a recomputed no-grad forward otherwise) and each
token's surrogate is weighted by ``min(pi_train_old / pi_rollout, C)``.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace

import torch

from grace.config import TrainConfig, role_max_new_tokens, trained_roles
from grace.distributed.parallel import Parallel
from grace.distributed.ranks import reduce_sums, sum_over_ranks
from grace.generation.rollout import RolloutBatch
from grace.objectives.infonce import InfoNCEOutput, info_nce
from grace.objectives.optimizer import apply_update
from grace.objectives.policy_gradient.embedding_loss import EmbeddingPartners
from grace.objectives.policy_gradient.logprobs import PolicyOutput, policy_logprobs
from grace.objectives.policy_gradient.ppo_loss import LossOutput, ppo_loss
from grace.objectives.policy_gradient.rollout_correction import (
    Correction,
    MismatchSums,
    correction_level,
    mismatch_sums,
    truncated_importance_weights,
)


@dataclass
class UpdateStats:
    policy_loss: float = 0.0
    clip_fraction: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    ratio_max: float = 1.0
    grad_norm: float = 0.0
    updates: int = 0
    embedding_loss: float = 0.0  # mean over updates of each mini-batch's mean InfoNCE (0 without the embedding loss)
    embedding_accuracy: float = 0.0  # share of embedding-loss rows whose partner is their most similar candidate
    rollout: dict[str, float] = field(default_factory=dict)  # rollout/logprob_mismatch_* and, corrected, rollout/importance_weight_*
    skipped: int = 0  # updates not applied: their loss or gradient was not finite (grace.objectives.optimizer)


@dataclass
class MiniBatch:
    """The rows of one optimizer update and how their loss terms are normalised."""

    policy_rows: torch.Tensor  # [R] bool, rows whose PPO terms count (trained rows of the mini-batch's groups)
    forward_rows: torch.Tensor  # [R] bool, rows to run the policy over (a superset of what contributes)
    normaliser: float  # the PPO terms' divisor: the mini-batch's rationale tokens or sequences (over every rank)
    embedding_rows: torch.Tensor | None = None  # [R] bool, rows in the embedding loss (None: no embedding loss)
    embedding_normaliser: float | None = None  # the embedding loss's divisor (None: embedding_rows' count)


@dataclass
class StepTotals:
    """Running sums over a step's micro-batches (each term already divided by its mini-batch's size)."""

    policy_loss: float = 0.0
    kl: float = 0.0
    clipped_tokens: float = 0.0
    ratio_max: float = 1.0
    entropy_sum: float = 0.0  # over the policy tokens actually computed
    entropy_tokens: float = 0.0
    embedding_loss: float = 0.0
    embedding_correct: int = 0
    mismatch_abs: float = 0.0  # sum over compared tokens of |log pi_train - log pi_rollout|
    mismatch_kl: float = 0.0  # sum of the k3 estimates
    mismatch_ratio_max: float = 0.0
    mismatch_tokens: float = 0.0
    weight_sum: float = 0.0  # importance weights of the corrected tokens (0 without the correction)
    weight_clipped: float = 0.0  # corrected tokens whose weight the cap truncated
    weight_tokens: float = 0.0

    def add_mismatch(self, sums: MismatchSums) -> None:
        self.mismatch_abs += sums.abs_diff
        self.mismatch_kl += sums.kl
        self.mismatch_ratio_max = max(self.mismatch_ratio_max, sums.ratio_max)
        self.mismatch_tokens += sums.tokens

    def add_weights(self, weights: torch.Tensor, mask: torch.Tensor, cap: float) -> None:
        """One micro-batch's importance weights [B, T] over the tokens of ``mask`` [B, T] bool."""
        self.weight_sum += float(weights[mask].sum())
        self.weight_clipped += float((weights[mask] >= cap * (1 - 1e-6)).sum())  # exp(log C) rounds to about C
        self.weight_tokens += float(mask.sum())

    def rollout_metrics(self, corrected: bool) -> dict[str, float]:
        sums = MismatchSums(self.mismatch_abs, self.mismatch_kl, self.mismatch_ratio_max, self.mismatch_tokens)
        metrics = sums.metrics()
        if corrected:
            metrics["rollout/importance_weight_mean"] = self.weight_sum / max(self.weight_tokens, 1.0)
            metrics["rollout/importance_weight_clipped_fraction"] = self.weight_clipped / max(self.weight_tokens, 1.0)
        return metrics

    def add_ppo(self, out: LossOutput, policy_mask: torch.Tensor, entropy: torch.Tensor) -> None:
        """One micro-batch's PPO terms: ``policy_mask`` [B, T] bool, the tokens they were computed over;
        ``entropy`` [B, T] float, zero off those tokens (where the embedding loss forwards extra rows)."""
        self.policy_loss += float(out.policy_loss)
        self.kl += float(out.kl)
        policy_tokens = float(policy_mask.sum())
        self.entropy_sum += float(entropy.sum())
        self.entropy_tokens += policy_tokens
        # clip_fraction is a share of this micro-batch's tokens: weigh it back into a count.
        self.clipped_tokens += float(out.clip_fraction) * policy_tokens
        self.ratio_max = max(self.ratio_max, float(out.ratio_max))

    def add_embedding(self, terms: EmbeddingTerms) -> None:
        """One micro-batch's embedding-loss terms."""
        self.embedding_loss += float(terms.loss.detach())
        self.embedding_correct += int(terms.contrast.correct.sum())


@dataclass
class EmbeddingTerms:
    """The embedding loss of one micro-batch's rows that take part in it."""

    loss: torch.Tensor  # [] float32, the rows' summed InfoNCE over the mini-batch's embedding-row count (with gradient)
    contrast: InfoNCEOutput  # per row [N]: loss, correct, cosines


def ppo_update(
    policy: Parallel,
    reference: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    trained: torch.Tensor,
    cfg: TrainConfig,
    autocast: AbstractContextManager,
    partners: EmbeddingPartners | None = None,
) -> UpdateStats:
    """Every optimizer update of one step over this rank's rollouts ``batch``; ``advantages`` [R] float,
    ``trained`` [R] bool. ``batch.group`` holds each row's position in the global batch, which says its
    mini-batch. ``partners`` (from ``rollout_partners``) switches the embedding loss on, weighted by
    ``algorithm.embedding_loss_coef``."""
    algorithm = cfg.algorithm
    policy.module.train()
    per_update = cfg.trainer.mini_batch_size or cfg.trainer.batch_size
    update_of_row = batch.group // per_update  # groups are global example positions: mini-batch m holds m*per_update..
    updates = cfg.trainer.batch_size // per_update
    stats, totals, grad_norms = UpdateStats(), StepTotals(), 0.0
    level = correction_level(algorithm.rollout_correction, precision=cfg.trainer.precision, compiled=cfg.generation.compile)
    correction = Correction(batch.logprobs, level, algorithm.rollout_correction_cap)
    # With one optimizer update the first forward's own log-probs are the trainer's old ones; with more, the
    # later updates need them from before the first step: one no-grad forward.
    if algorithm.recompute_old_logprobs or (level is not None and updates * algorithm.ppo_epochs > 1):
        batch.logprobs = _logprobs_in_chunks(policy, batch, torch.nonzero(trained).flatten(), cfg, autocast, totals)
        correction.recomputed = True
    needs_all_rows = algorithm.kl_coef > 0 or algorithm.entropy_coef > 0
    max_tokens = max(role_max_new_tokens(cfg, role) for role in trained_roles(cfg))
    normalisers, embedding_counts = _global_counts(batch, trained, update_of_row, updates, algorithm.aggregation, partners, max_tokens)
    for epoch in range(algorithm.ppo_epochs):
        for update in range(updates):
            correction.measure = not correction.recomputed and epoch == 0 and update == 0
            in_groups = update_of_row == update
            in_update = trained & in_groups
            forward = in_update if needs_all_rows else in_update & (advantages != 0)
            embedding = partners.takes_part & in_groups if partners is not None else None
            if embedding is not None:
                forward = forward | embedding
            optimizer.zero_grad(set_to_none=True)
            rows = MiniBatch(in_update, forward, float(normalisers[update]), embedding, float(embedding_counts[update]))
            before = replace(totals)
            accumulate_gradients(policy, reference, batch, advantages, rows, cfg, autocast, totals, partners, correction)
            loss = (totals.policy_loss - before.policy_loss) + (totals.kl - before.kl) + (totals.embedding_loss - before.embedding_loss)
            outcome = apply_update(policy.module, optimizer, scheduler, cfg.trainer.grad_clip, loss=loss)
            stats.updates += 1
            if not outcome.applied:  # its numbers stay out of the logged means: they describe no update
                totals, stats.skipped = before, stats.skipped + 1
                continue
            grad_norms += outcome.grad_norm
    totals = StepTotals(**reduce_sums(asdict(totals), maxima=frozenset({"ratio_max", "mismatch_ratio_max"})))
    tokens = float(sum_over_ranks(batch.rationale_mask[trained].sum()))
    applied = stats.updates - stats.skipped

    def mean_applied(total: float) -> float:  # the mean over the applied updates; NaN when none was
        return total / applied if applied else math.nan

    stats.policy_loss = mean_applied(totals.policy_loss)
    stats.kl = mean_applied(totals.kl)
    stats.grad_norm = mean_applied(grad_norms)  # mean over the step's applied optimizer updates
    stats.entropy = totals.entropy_sum / max(totals.entropy_tokens, 1.0)
    stats.clip_fraction = totals.clipped_tokens / max(tokens * algorithm.ppo_epochs * applied / stats.updates, 1.0)
    stats.ratio_max = totals.ratio_max
    stats.embedding_loss = mean_applied(totals.embedding_loss)
    stats.embedding_accuracy = totals.embedding_correct / max(float(embedding_counts.sum()) * algorithm.ppo_epochs * applied / stats.updates, 1.0)
    stats.rollout = totals.rollout_metrics(corrected=level is not None)
    policy.module.eval()
    return stats


def _global_counts(
    batch, trained, update_of_row, updates: int, aggregation: str, partners, max_tokens: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mini-batch, over every rank: the PPO normaliser (rationale tokens, sequences, or sequences x
    ``max_tokens`` for Dr. GRPO's constant, of the trained rows) and the rows in the embedding loss.
    [updates] float64 each, one collective for both."""
    if aggregation == "token-mean":
        per_row = batch.rationale_mask.sum(dim=1).double()
    else:
        per_row = torch.full((len(batch),), float(max_tokens) if aggregation == "constant" else 1.0, dtype=torch.float64)
    per_row = torch.where(trained.to(per_row.device), per_row, 0.0).cpu()
    embedding = partners.takes_part.double().cpu() if partners is not None else torch.zeros(len(batch), dtype=torch.float64)
    index = update_of_row.cpu()
    counts = torch.zeros(2, updates, dtype=torch.float64)
    counts[0].index_add_(0, index, per_row)
    counts[1].index_add_(0, index, embedding)
    counts = sum_over_ranks(counts)
    return counts[0], counts[1]


def accumulate_gradients(
    policy: Parallel,
    reference: torch.nn.Module | None,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    rows: MiniBatch,
    cfg: TrainConfig,
    autocast: AbstractContextManager,
    totals: StepTotals,
    partners: EmbeddingPartners | None = None,
    correction: Correction | None = None,
) -> None:
    """Backward of one mini-batch's loss, ``trainer.micro_batch_size`` rows at a time, into ``.grad``;
    its logged numbers are added to ``totals``.

    Every term is divided by the whole mini-batch's count (``rows.normaliser`` for the PPO terms, the
    embedding rows for the embedding loss), so the accumulated gradient is the full mini-batch gradient.
    Every rank runs as many micro-batches as the rank with the most (``Parallel.micro_batches``); a filler
    runs the same forward and backward with weight 0. ``correction``: the rollout's log-probs, to measure the
    mismatch against and (``correction.level``) to correct for; None: neither.
    """
    algorithm = cfg.algorithm
    entropy_mode = "trained" if algorithm.entropy_coef > 0 else "logged"
    pooling = cfg.embedding.pooling if partners is not None else None
    embedding_count = _embedding_count(rows)
    selected = torch.nonzero(rows.forward_rows).flatten()
    for micro, real in policy.micro_batches(selected, cfg.trainer.micro_batch_size):
        part = batch.select(micro)
        current, ref = _forward(policy, reference, part, autocast, entropy_mode, pooling)
        out, policy_mask = _ppo_terms(current, ref, part, micro, advantages, rows, cfg, partners is not None, correction, totals if real else None)
        embedding = _embedding_terms(current, micro, rows, partners, cfg, embedding_count)
        loss = out.loss if embedding is None else out.loss + algorithm.embedding_loss_coef * embedding.loss
        (loss * (policy.loss_scale if real else 0.0)).backward()
        if not real:
            continue
        # Each micro-batch's terms are already divided by the mini-batch size: they add up.
        totals.add_ppo(out, policy_mask, _logged_entropy(current, policy_mask, masked=partners is not None))
        if embedding is not None:
            totals.add_embedding(embedding)


def _embedding_count(rows: MiniBatch) -> float:
    """The embedding loss's divisor for ``rows``: its global count when given, else its local one (at least 1)."""
    if rows.embedding_rows is None:
        return 1.0
    return max(rows.embedding_normaliser if rows.embedding_normaliser is not None else float(rows.embedding_rows.sum()), 1.0)


def _forward(
    policy: Parallel, reference, part: RolloutBatch, autocast, entropy_mode: str, pooling: str | None
) -> tuple[PolicyOutput, torch.Tensor | None]:
    """The policy's log-probs [B, T] (with entropy, and pooled embeddings [B, H] when ``pooling``) of the
    micro-batch ``part``, and the reference's log-probs [B, T] (None without a reference)."""
    with autocast:
        current = policy_logprobs(policy.module, part, entropy=entropy_mode, pooling=pooling)
        ref = None
        if reference is not None:
            with torch.no_grad():
                ref = policy_logprobs(reference, part).logprobs
    return current, ref


def _ppo_terms(
    current: PolicyOutput,
    ref: torch.Tensor | None,
    part: RolloutBatch,
    micro: torch.Tensor,
    advantages: torch.Tensor,
    rows: MiniBatch,
    cfg: TrainConfig,
    masked: bool,
    correction: Correction | None = None,
    totals: StepTotals | None = None,
) -> tuple[LossOutput, torch.Tensor]:
    """PPO surrogate, KL and entropy terms of the micro-batch ``part`` (rows ``micro`` [B] of the rollouts),
    divided by the mini-batch's ``rows.normaliser``; and the [B, T] bool mask of tokens they count. The
    rollout mismatch and importance weights are added to ``totals`` (None: a filler micro-batch, not logged)."""
    algorithm = cfg.algorithm
    device = current.logprobs.device
    # Rows forwarded only for the embedding loss contribute no PPO term (a mask of False removes them).
    policy_mask = part.rationale_mask.to(device)
    if masked:
        policy_mask = policy_mask & rows.policy_rows[micro].to(device).unsqueeze(1)
    old, weights = part.logprobs.to(device), None
    if correction is not None:
        rollout_logprobs = correction.rollout_logprobs[micro, : old.shape[1]].to(device)
        if correction.measure and totals is not None:
            totals.add_mismatch(mismatch_sums(current.logprobs.detach(), rollout_logprobs, policy_mask))
        if correction.level is not None:
            if not correction.recomputed:  # one update per step: this forward is the trainer's old policy
                old = current.logprobs.detach()
            weights = truncated_importance_weights(old, rollout_logprobs, policy_mask, cap=correction.cap, level=correction.level)
            if totals is not None:
                totals.add_weights(weights, policy_mask, correction.cap)
    out = ppo_loss(
        current.logprobs,
        old,
        advantages[micro].to(device),
        policy_mask,
        clip_low=algorithm.clip_low,
        clip_high=algorithm.clip_high,
        aggregation=algorithm.aggregation,
        normaliser=max(rows.normaliser, 1.0),
        ref_logprobs=ref,
        kl_coef=algorithm.kl_coef,
        kl_estimator=algorithm.kl_estimator,
        entropy=current.entropy,
        entropy_coef=algorithm.entropy_coef,
        importance_weights=weights,
    )
    return out, policy_mask


def _embedding_terms(
    current: PolicyOutput,
    micro: torch.Tensor,
    rows: MiniBatch,
    partners: EmbeddingPartners | None,
    cfg: TrainConfig,
    embedding_count: float,
) -> EmbeddingTerms | None:
    """InfoNCE of the micro-batch's rows in the embedding loss (rows ``micro`` [B] of the rollouts) against
    their detached partners, divided by ``embedding_count``; None without the loss or without such rows."""
    if partners is None:
        return None
    device = current.logprobs.device
    member = rows.embedding_rows[micro].to(device)
    if not bool(member.any()):
        return None
    contrast = info_nce(
        current.embeddings[member],
        partners.candidates.to(device),
        partners.targets[micro].to(device)[member],
        temperature=cfg.algorithm.embedding_loss_temperature,
        exclude=partners.exclude[micro].to(device)[member],
    )
    return EmbeddingTerms(contrast.loss.sum() / embedding_count, contrast)


def _logged_entropy(current: PolicyOutput, policy_mask: torch.Tensor, masked: bool) -> torch.Tensor:
    """[B, T] detached entropies to log; zero on rows forwarded only for the embedding loss when ``masked``."""
    entropy = current.entropy.detach()
    return entropy if not masked else torch.where(policy_mask, entropy, 0.0)


@torch.no_grad()
def _logprobs_in_chunks(
    policy: Parallel, batch: RolloutBatch, rows: torch.Tensor, cfg: TrainConfig, autocast, totals: StepTotals | None = None
) -> torch.Tensor:
    """[R, T] the trainer's log-probs of ``rows`` (the rollout's elsewhere), no gradient; their mismatch with
    the rollout's is added to ``totals``."""
    logprobs = batch.logprobs.clone()
    for micro, real in policy.micro_batches(rows, cfg.trainer.micro_batch_size):
        part = batch.select(micro)
        with autocast:
            values = policy_logprobs(policy.module, part).logprobs.float().to(logprobs.device)
        if real:
            logprobs[micro, : values.shape[1]] = values
            if totals is not None:
                rollout_logprobs = part.logprobs[:, : values.shape[1]].to(values.device)
                totals.add_mismatch(mismatch_sums(values, rollout_logprobs, part.rationale_mask.to(values.device)))
    return logprobs
