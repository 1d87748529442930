"""objective=grace: the GRACE step.

    examples -> rollouts for every role (rationales, embeddings pooled while generating) -> rewards
    (the weighted components of reward.components, grace.rewards) -> advantages -> PPO update in
    mini-batches (grace.objectives.policy_gradient.ppo_update), optionally with the embedding loss

``sample`` (rollouts and rewards, no update) is also what rejection sampling uses (grace.training.demonstrations).

Rollout seeds are a function of (seed, step, row), so a resumed run samples the rationales it would have
sampled. Advantage groups are (example, role): the k rationales of one text in one role.

Under torchrun each rank rolls out its share of the examples (all rationales of an example on one rank;
``grace.distributed.ranks.local_examples``), with the seeds of their rows in the global batch; the pooled
embeddings and labels of every rank are gathered (no gradient: [R, H] floats), so every reward term and
advantage is computed over the global batch, on every rank, exactly as one process would; each rank then
trains on its own rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from grace.config import TrainConfig, plain_documents, reward_components, role_max_new_tokens, role_samples, rollout_roles
from grace.data import Sentence, Triplet
from grace.data.roles import Role
from grace.distributed.ranks import local_examples, max_over_ranks
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.generation.rollout import RoleSampling, RolloutBatch, RolloutRequest, expand_requests, rollout
from grace.generation.sampling import derived_seed
from grace.objectives.base import Objective, StepResult, TrainContext
from grace.objectives.policy_gradient.advantages import compute_advantages, per_component_advantages
from grace.objectives.policy_gradient.embedding_loss import EmbeddingPartners, rollout_partners
from grace.objectives.policy_gradient.global_batch import SharedRollout
from grace.objectives.policy_gradient.ppo_update import UpdateStats, ppo_update
from grace.rewards import RewardBreakdown, RewardFunction, within_group_std
from grace.rewards.degenerate import repetition_rates
from grace.rewards.statistics import different_text_mean_cos


class PolicyGradient(Objective):
    name = "grace"
    progress_metric = ("reward", "reward/total_mean")
    training_score = "reward/total_mean"

    def __init__(self, context: TrainContext) -> None:
        super().__init__(context)
        self.sampling = role_sampling(context.cfg)
        self.reward = RewardFunction.from_config(reward_components(context.cfg), context.cfg.reward, context.cfg.mode)

    @property
    def embedding(self) -> EmbeddingConfig:
        return rationale_embedding(self.context.cfg)

    @property
    def query_embedding(self) -> EmbeddingConfig | None:
        return query_rationale_embedding(self.context.cfg)

    def updates_per_step(self) -> int:
        cfg = self.context.cfg
        return cfg.algorithm.ppo_epochs * (cfg.trainer.batch_size // (cfg.trainer.mini_batch_size or cfg.trainer.batch_size))

    def step(self, step: int, examples: Sequence[Triplet | Sentence], optimizer, scheduler) -> StepResult:
        context, cfg = self.context, self.context.cfg
        sampled = self.sample(step, examples)
        everyone, rewards = sampled.everyone, sampled.rewards
        key = everyone.group * len(Role) + everyone.role  # advantage groups: (example, role)
        advantages, parts = step_advantages(cfg, rewards, key)

        # Policy update of this rank's rows, with the embedding loss against the rollout's own (detached)
        # embeddings if asked (its candidates: the whole global batch).
        own = sampled.rows.to(advantages.device)
        partners = None
        if cfg.algorithm.embedding_loss_coef > 0:
            partners = own_rows(rollout_partners(everyone.embeddings, everyone.group, everyone.role, cfg.mode), own)
        update = ppo_update(
            context.parallel, context.reference, optimizer, scheduler, sampled.local, advantages[own], rewards.trained[own],
            cfg, context.autocast, partners,
        )  # fmt: skip

        return StepResult(
            metrics={
                **step_metrics(cfg, everyone, rewards, advantages, key, update, sampled.rollout_seconds, sampled.gather_seconds),
                **component_advantage_metrics(parts, rewards.trained),
            },
            updates=update.updates,
            rationales=sample_rationales(sampled.local, rewards.total[own], advantages[own], context.tokenizer, cfg.trainer.rationale_log_count),
            skipped_updates=update.skipped,
        )

    def sample(self, step: int, examples: Sequence[Triplet | Sentence]) -> "Sampled":
        """Rollouts of this rank's share of ``examples`` (k rationales per text and role, embeddings pooled
        during generation), gathered into the global batch, and the rewards over it. Groups are positions
        in the global batch; seeds are a function of (seed, step, global row)."""
        context, cfg = self.context, self.context.cfg
        mine = local_examples(len(examples), cfg.trainer.mini_batch_size or cfg.trainer.batch_size)
        requests = rollout_requests([examples[i] for i in mine], cfg.mode, groups=mine)
        rows = global_rows(mine, len(expand_requests(requests, self.sampling)) // len(mine))
        context.model.eval()
        rollout_started = time.perf_counter()
        with context.parallel.rollout(), context.autocast:
            batch = rollout(
                context.model,
                context.tokenizer,
                context.template,
                requests,
                self.sampling,
                pooling=cfg.embedding.pooling,
                max_prompt_tokens=cfg.embedding.max_prompt_tokens,
                seeds=[step_seed(cfg.seed, step, int(row)) for row in rows],
                batch_size=cfg.rollout.batch_size,
                options=cfg.generation,
            )
        rollout_seconds = float(max_over_ranks(time.perf_counter() - rollout_started))  # the step waits for the slowest rank
        gather_started = time.perf_counter()
        texts = [request.text for request, _ in expand_requests(rollout_requests(examples, cfg.mode), self.sampling)]
        everyone = SharedRollout.gather(batch, rows, texts)
        gather_seconds = time.perf_counter() - gather_started
        rewards = self.reward(everyone.reward_inputs(step, self.decode))
        if plain_documents(cfg):  # documents write no rationale: nothing of theirs to train
            rewards.trained = rewards.trained & (everyone.role == Role.QUERY).to(rewards.trained.device)
        return Sampled(batch, rows, everyone, rewards, rollout_seconds, gather_seconds)

    def decode(self, ids: list[int]) -> str:
        return self.context.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class Sampled:
    """One step's rollouts and rewards, before the update."""

    local: RolloutBatch  # this rank's r rows (one process: all R)
    rows: torch.Tensor  # [r] long, global row of each local row
    everyone: SharedRollout  # the global batch's R rows
    rewards: RewardBreakdown  # over the global batch, [R] each
    rollout_seconds: float  # the slowest rank's
    gather_seconds: float


def rationale_embedding(cfg: TrainConfig) -> EmbeddingConfig:
    """How a policy trained to write rationales embeds documents: greedy rationales of the positive role's
    length; with embedding.rationales=queries, plain text (no rationale), as the documents were trained."""
    if plain_documents(cfg):
        return EmbeddingConfig(cfg.embedding.system_prompt, cfg.embedding.pooling, cfg.embedding.max_prompt_tokens, rationale=False)
    return EmbeddingConfig(
        system_prompt=cfg.embedding.system_prompt,
        pooling=cfg.embedding.pooling,
        max_prompt_tokens=cfg.embedding.max_prompt_tokens,
        decoding=Decoding(max_new_tokens=role_max_new_tokens(cfg, "positive")),
    )


def query_rationale_embedding(cfg: TrainConfig) -> EmbeddingConfig | None:
    """How queries embed when they differ from documents (embedding.rationales=queries): greedy rationales of
    the query role's length. None: as documents."""
    if not plain_documents(cfg):
        return None
    return EmbeddingConfig(
        system_prompt=cfg.embedding.system_prompt,
        pooling=cfg.embedding.pooling,
        max_prompt_tokens=cfg.embedding.max_prompt_tokens,
        decoding=Decoding(max_new_tokens=role_max_new_tokens(cfg, "query")),
    )


def step_advantages(cfg: TrainConfig, rewards: RewardBreakdown, key: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantages [R] of the global batch by ``algorithm.normalize``, and (per_component only) each reward
    component's part [R] of them; ``key`` [R]: the advantage group of each row."""
    algorithm = cfg.algorithm
    if algorithm.normalize != "per_component":
        total = compute_advantages(rewards.total, key, rewards.trained, estimator=algorithm.estimator, scale_by_std=algorithm.scale_by_std)
        return total, {}
    # The composed reward's weights hold only scheduled components; the others' weight is their config weight.
    weights = {c: rewards.weights.get(c, float(reward_components(cfg)[c].weight)) for c in rewards.components}
    return per_component_advantages(rewards.components, weights, key, rewards.trained, estimator=algorithm.estimator)


def component_advantage_metrics(parts: dict[str, torch.Tensor], trained: torch.Tensor) -> dict[str, float]:
    """``advantage/<component>_std`` and ``_abs_mean`` over the trained rows: how much each reward component
    moves the advantage (algorithm.normalize=per_component; empty otherwise)."""
    metrics = {}
    for name, part in parts.items():
        metrics[f"advantage/{name}_std"] = float(part[trained].std(unbiased=False))
        metrics[f"advantage/{name}_abs_mean"] = float(part[trained].abs().mean())
    return metrics


def global_rows(examples: list[int], per_example: int) -> torch.Tensor:
    """[r] global row of each local rollout row: every example has ``per_example`` rows (roles x samples), in
    example order, so the global batch's rows are laid out as one process lays them out."""
    return torch.tensor([e * per_example + j for e in examples for j in range(per_example)], dtype=torch.long)


def own_rows(partners: EmbeddingPartners, rows: torch.Tensor) -> EmbeddingPartners:
    """The global batch's partners, restricted to this rank's ``rows`` (candidates stay global)."""
    return EmbeddingPartners(partners.candidates, partners.targets[rows], partners.exclude[rows], partners.takes_part[rows])


def role_sampling(cfg: TrainConfig) -> dict[Role, RoleSampling]:
    sampling = {}
    for name in rollout_roles(cfg):
        settings = getattr(cfg.rollout, name)
        sampling[Role[name.upper()]] = RoleSampling(
            num_samples=role_samples(cfg, name),
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=role_max_new_tokens(cfg, name),  # a role's own 0 is 0, not "unset"
        )
    return sampling


def rollout_requests(examples: Sequence[Triplet | Sentence], mode: str, groups: Sequence[int] | None = None) -> list[RolloutRequest]:
    """Supervised: query, positive and negative of each triplet. Unsupervised: the sentence twice, as the
    "query" view and the "positive" view (their rationales differ, like dropout views in SimCSE).
    ``groups``: each example's group id (default: its position)."""
    requests = []
    for group, example in zip(groups if groups is not None else range(len(examples)), examples):
        if mode == "supervised":
            requests += [
                RolloutRequest(example.query, group, Role.QUERY),
                RolloutRequest(example.positive, group, Role.POSITIVE),
                RolloutRequest(example.negative, group, Role.NEGATIVE),
            ]
        else:
            requests += [RolloutRequest(example.text, group, Role.QUERY), RolloutRequest(example.text, group, Role.POSITIVE)]
    return requests


def step_seed(seed: int, step: int, row: int) -> int:
    """The seed of one rollout row at one step: the same whichever rank rolls it out."""
    return derived_seed(f"{seed}/{step}/{row}")


def step_metrics(
    cfg: TrainConfig,
    batch: SharedRollout,
    rewards: RewardBreakdown,
    advantages,
    key,
    update: UpdateStats,
    rollout_seconds: float,
    gather_seconds: float = 0.0,
) -> dict[str, Any]:
    trained = rewards.trained
    lengths = batch.rationale_lengths.float()
    metrics: dict[str, Any] = {}
    # The total, the GRACE terms (and other components' parts), then each component's contribution.
    for name, value in {"total": rewards.total, **rewards.terms, **rewards.components}.items():
        metrics[f"reward/{name}_mean"] = float(value[trained].mean())
        metrics[f"reward/{name}_std"] = float(value[trained].std(unbiased=False))
        metrics[f"reward/{name}_within_group_std"] = float(within_group_std(value, key, trained))
    for name, weight in rewards.weights.items():
        metrics[f"reward_weight/{name}"] = weight
    for name, capped in rewards.capped.items():
        metrics[f"reward_capped/{name}"] = float(capped[trained].float().mean())
    for role in Role:
        members = trained & (batch.role == role)
        if bool(members.any()):
            metrics[f"reward/total_mean_{role.name.lower()}"] = float(rewards.total[members].mean())
    metrics.update(
        {
            "advantage/mean": float(advantages[trained].mean()),
            "advantage/std": float(advantages[trained].std(unbiased=False)),
            "advantage/abs_mean": float(advantages[trained].abs().mean()),
            "advantage/nonzero_fraction": float((advantages[trained] != 0).float().mean()),
            "loss/policy": update.policy_loss,
            "loss/clip_fraction": update.clip_fraction,
            "loss/kl": update.kl,
            "loss/entropy": update.entropy,
            "loss/ratio_max": update.ratio_max,
            **update.rollout,  # rollout/logprob_mismatch_*: the engine's log-probs against the update forward's
        }
    )
    if cfg.algorithm.embedding_loss_coef > 0:
        metrics["loss/embedding"] = update.embedding_loss
        metrics["loss/embedding_accuracy"] = update.embedding_accuracy
    metrics.update(
        {
            "optim/grad_norm": update.grad_norm,
            "rollout/rationale_length_mean": float(lengths.mean()),
            "rollout/rationale_length_max": float(lengths.max()),
            "rollout/truncation_rate": float(batch.truncated.float().mean()),
            "rollout/input_truncation_rate": float(batch.input_truncated.float().mean()),
            # What the guards watch (grace/training/guards.py): loops in the rationales, and embeddings of different
            # texts drawing together (near 1: collapse).
            "rollout/repetition_rate": float(repetition_rates(batch.rationale_ids, batch.rationale_mask).mean()),
            "rollout/embedding_mean_cos": different_text_mean_cos(batch.embeddings, batch.texts),
            "rollout/rows": len(batch),
            "time/rollout_seconds": rollout_seconds,
            "time/gather_seconds": gather_seconds,
            "time/generated_tokens_per_second": float(lengths.sum()) / max(rollout_seconds, 1e-9),
        }
    )
    return metrics


def sample_rationales(batch: RolloutBatch, rewards, advantages, tokenizer, count: int) -> list[dict[str, Any]]:
    """The first rollout of each role of the first groups: a few readable samples, decoded alone."""
    rows: list[dict[str, Any]] = []
    seen = set()
    for i in range(len(batch)):
        slot = (int(batch.group[i]), int(batch.role[i]))
        if slot in seen:
            continue
        seen.add(slot)
        ids = batch.rationale_ids[i][batch.rationale_mask[i]].tolist()
        rows.append(
            {
                "group": slot[0],
                "role": Role(slot[1]).name.lower(),
                "text": batch.texts[i],
                "rationale": tokenizer.decode(ids, skip_special_tokens=True),
                "reward": float(rewards[i]),
                "advantage": float(advantages[i]),
                "truncated": bool(batch.truncated[i]),
            }
        )
        if len(rows) == count:
            break
    return rows
