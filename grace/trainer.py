"""The GRACE training loop.

    batch of examples -> rollouts for every role -> rewards -> advantages
    -> PPO update in mini-batches, micro-batches with gradient accumulation -> metrics -> checkpoint

``train`` reads top to bottom; each stage is a function of this file or a module of its own. The loop
is deterministic on CPU for a given seed: data order, rollout seeds and the optimizer state are all
functions of (seed, step) or stored in the checkpoint, so 2 steps + resume + 2 steps == 4 steps.
"""
from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from grace.advantages import compute_advantages
from grace.checkpoint import (
    checkpoint_root,
    complete_checkpoints,
    encoder_name,
    latest_checkpoint,
    load_trainer_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from grace.config import (
    ConfigError,
    TrainConfig,
    resolve_train_file,
    role_max_new_tokens,
    role_samples,
    rollout_roles,
    validate,
)
from grace.data import DataError, DataIssue, Sentence, Triplet, load_examples
from grace.data.stream import ExampleStream
from grace.embedding import Decoding, EmbeddingConfig
from grace.loss import policy_logprobs, ppo_loss
from grace.models import load_policy, load_tokenizer
from grace.prompts import PromptTemplate
from grace.rewards import compute_rewards, within_group_std
from grace.rollout import Role, RoleSampling, RolloutBatch, RolloutRequest, expand_requests, rollout
from grace.tracking import METRICS_FILE, RunLogger


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path
    steps_done: int


def train(cfg: TrainConfig, output_dir: str | Path, *, run_name: str | None = None, run_group: str | None = None) -> TrainResult:
    # Settings, output directory and data are all checked before the weights load (minutes for a large
    # backbone, wasted if line 9000 of the data is bad).
    validate(cfg)
    output_dir = Path(output_dir)
    check_output_dir(cfg, output_dir)
    resume_from = find_resume_checkpoint(cfg, output_dir)
    policy_source = str(resume_from or cfg.model.source)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    device = resolve_device(cfg.model.device)
    torch.manual_seed(cfg.seed)

    # Data: every example checked against the prompt budget, which needs only the tokenizer.
    tokenizer = load_tokenizer(policy_source, trust_remote_code=cfg.model.trust_remote_code)
    try:
        template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    except ValueError as error:  # no chat template: a base model, not an instruct model
        raise ConfigError(f"model.source={cfg.model.source!r}: {error}") from None
    loaded = load_examples(
        resolve_train_file(cfg),
        cfg.mode,
        on_error=cfg.data.on_error,
        token_count=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        max_tokens=cfg.embedding.max_prompt_tokens - template.overhead,
        limit=cfg.data.limit,
        text_field=cfg.data.text_field,
        split=cfg.data.split,
    )
    print(loaded.summary())
    if len(loaded.examples) < cfg.trainer.batch_size:
        reason = f"only {len(loaded.examples)} usable examples, fewer than trainer.batch_size={cfg.trainer.batch_size}: lower that"
        raise DataError(DataIssue(loaded.source, None, None, reason), hint=None)
    stream = ExampleStream(loaded.examples, cfg.trainer.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)

    # Policy (from the checkpoint when resuming), and a frozen reference only if KL is actually used.
    model, tokenizer = load_policy(policy_source, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.gradient_checkpointing:  # renamed in later transformers 5 releases, where the old name warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    reference = None
    if cfg.algorithm.kl_coef > 0:
        reference, _ = load_policy(cfg.model.source, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
        reference.requires_grad_(False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = make_scheduler(optimizer, cfg)
    step, position = 0, 0
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, position = state["step"], state["data_position"]
        restore_rng_state(state["rng"])
        print(f"resumed from {resume_from} at step {step}")

    sampling = role_sampling(cfg)
    embedding = EmbeddingConfig(
        system_prompt=cfg.embedding.system_prompt,
        pooling=cfg.embedding.pooling,
        max_prompt_tokens=cfg.embedding.max_prompt_tokens,
        decoding=Decoding(max_new_tokens=sampling[Role.POSITIVE].max_new_tokens),
    )
    run_label = run_name or output_dir.name
    logger = RunLogger(
        output_dir,
        backend=cfg.logger.backend,
        config=OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        resumed_step=step,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=cfg.logger.mode,
        name=cfg.logger.name or run_name,
        group=cfg.logger.group or run_group,
        tags=list(cfg.logger.tags),
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.trainer.precision == "bf16" else nullcontext()

    def checkpoint(at_step: int) -> Path:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": at_step,
            "data_position": position,
            "rng": rng_state(),
            "run_name": run_label,  # in full: the encoder's name is cut short to serve as a folder name
        }
        name = encoder_name(run_label, at_step)
        return save_checkpoint(output_dir, at_step, model, tokenizer, embedding, state, keep_last=cfg.trainer.keep_last, name=name)

    last = latest_checkpoint(output_dir)
    exit_code = 1
    try:
        progress = tqdm(total=cfg.trainer.max_steps, initial=step, desc="grace", disable=not cfg.logger.progress_bar, dynamic_ncols=True)
        while step < cfg.trainer.max_steps:
            started = time.perf_counter()
            examples = stream.batch_at(position)
            position += len(examples)
            step += 1

            # 1. Rollouts: k rationales per text and role, embeddings pooled during generation.
            requests = rollout_requests(examples, cfg.mode)
            rows = expand_requests(requests, sampling)
            model.eval()
            rollout_started = time.perf_counter()
            with autocast:
                batch = rollout(
                    model,
                    tokenizer,
                    template,
                    requests,
                    sampling,
                    pooling=cfg.embedding.pooling,
                    max_prompt_tokens=cfg.embedding.max_prompt_tokens,
                    seeds=[step_seed(cfg.seed, step, i) for i in range(len(rows))],
                    batch_size=cfg.rollout.batch_size,
                    options=cfg.generation,
                )
            rollout_seconds = time.perf_counter() - rollout_started

            # 2. Rewards and advantages; advantage groups are (example, role).
            rewards = compute_rewards(
                batch.embeddings,
                batch.group,
                batch.role,
                batch.truncated,
                variant=cfg.reward.variant,
                mode=cfg.mode,
                tau=cfg.reward.tau,
                w_cluster=cfg.reward.w_cluster,
                w_cross=cfg.reward.w_cross,
            )
            key = batch.group * len(Role) + batch.role
            advantages = compute_advantages(
                rewards.total, key, rewards.trained, estimator=cfg.algorithm.estimator, scale_by_std=cfg.algorithm.scale_by_std
            )

            # 3. Policy update (the learning rate logged is the one its optimizer updates use, read before
            # the scheduler moves on to the next step's).
            first_update = scheduler.last_epoch
            update = ppo_update(model, reference, optimizer, scheduler, batch, advantages, rewards.trained, cfg, autocast)

            # 4. Metrics, sample rationales, checkpoint.
            step_seconds = time.perf_counter() - started
            lr = mean_learning_rate(scheduler, first_update, update.updates)
            metrics = step_metrics(step, batch, rewards, advantages, key, update, step_seconds, rollout_seconds, lr)
            logger.log_step(metrics)
            if step == 1 or step % cfg.trainer.rationale_log_every == 0:
                logger.log_rationales(step, sample_rationales(batch, rewards.total, advantages, tokenizer, cfg.trainer.rationale_log_count))
            if step % cfg.trainer.save_every == 0 or step == cfg.trainer.max_steps:
                last = checkpoint(step)
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['reward/total_mean']:.3f}", step_s=f"{step_seconds:.1f}")
        progress.close()
        exit_code = 0
    finally:
        logger.close(exit_code)
    return TrainResult(output_dir, last, step)


# ---------------------------------------------------------------------- stages


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_output_dir(cfg: TrainConfig, output_dir: Path) -> None:
    """A fresh run must not write into an earlier run's directory: keep_last would delete its new step-1
    checkpoint at once (the old, higher steps are newer by number) and its metrics would be mixed in."""
    if cfg.trainer.resume != "none":
        return
    earlier = ["checkpoints"] if complete_checkpoints(output_dir) else []
    earlier += [METRICS_FILE] if (output_dir / METRICS_FILE).is_file() else []
    if earlier:
        raise ConfigError(
            f"{output_dir} already holds {' and '.join(earlier)} of an earlier run, which trainer.resume=none would "
            "overwrite: use trainer.resume=auto to continue, or a new trainer.output_dir"
        )


def find_resume_checkpoint(cfg: TrainConfig, output_dir: Path) -> Path | None:
    if cfg.trainer.resume == "none":
        return None
    if cfg.trainer.resume == "auto":
        found = latest_checkpoint(output_dir)
        if found is None:  # fine for a first run, but a mistyped directory must not pass for one
            print(
                f"trainer.resume=auto: no checkpoint in {checkpoint_root(output_dir)}, starting from step 0 "
                "(to continue an earlier run, set trainer.output_dir to its directory)"
            )
        return found
    return Path(cfg.trainer.resume)


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


def rollout_requests(examples: list[Triplet | Sentence], mode: str) -> list[RolloutRequest]:
    """Supervised: query, positive and negative of each triplet. Unsupervised: the sentence twice, as the
    "query" view and the "positive" view (their rationales differ, like dropout views in SimCSE)."""
    requests = []
    for group, example in enumerate(examples):
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
    digest = hashlib.blake2b(f"{seed}/{step}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate multiplier per optimizer update (not per step: a step may hold several updates)."""
    per_step = cfg.algorithm.ppo_epochs * (cfg.trainer.batch_size // (cfg.trainer.mini_batch_size or cfg.trainer.batch_size))
    total = max(1, cfg.trainer.max_steps * per_step)
    warmup = cfg.trainer.warmup_steps if cfg.trainer.schedule != "constant" else 0

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if cfg.trainer.schedule == "cosine":
            progress = (update - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class UpdateStats:
    policy_loss: float = 0.0
    clip_fraction: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    ratio_max: float = 1.0
    grad_norm: float = 0.0
    updates: int = 0


def ppo_update(model, reference, optimizer, scheduler, batch: RolloutBatch, advantages, trained, cfg: TrainConfig, autocast) -> UpdateStats:
    """PPO epochs over mini-batches of examples; each mini-batch is one optimizer update, computed in
    micro-batches of rows whose losses are normalised by the mini-batch's size so that the accumulated
    gradient equals the full mini-batch gradient."""
    algorithm = cfg.algorithm
    model.train()
    if algorithm.recompute_old_logprobs:
        batch.logprobs = _logprobs_in_chunks(model, batch, torch.nonzero(trained).flatten(), cfg, autocast)
    groups = torch.unique(batch.group[trained])
    per_update = cfg.trainer.mini_batch_size or cfg.trainer.batch_size
    # Rows with zero advantage add nothing to the clipped surrogate; skip their forward unless KL or
    # entropy terms need them (they still count in the normaliser, so the loss value is unchanged).
    needs_all_rows = algorithm.kl_coef > 0 or algorithm.entropy_coef > 0
    entropy_mode = "trained" if algorithm.entropy_coef > 0 else "logged"
    stats, totals = UpdateStats(), {"policy_loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "grad_norm": 0.0}
    entropy_sum, entropy_tokens = 0.0, 0.0  # over the rows actually computed, for an unbiased mean
    for _ in range(algorithm.ppo_epochs):
        for start in range(0, len(groups), per_update):
            in_update = trained & torch.isin(batch.group, groups[start : start + per_update])
            mask = batch.rationale_mask
            normaliser = float(mask[in_update].sum()) if algorithm.aggregation == "token-mean" else float(in_update.sum())
            compute = in_update if needs_all_rows else in_update & (advantages != 0)
            rows = torch.nonzero(compute).flatten()
            optimizer.zero_grad(set_to_none=True)
            for micro in rows.split(cfg.trainer.micro_batch_size) if len(rows) else ():
                part = batch.select(micro)
                with autocast:
                    current = policy_logprobs(model, part, entropy=entropy_mode)
                    ref = None
                    if reference is not None:
                        with torch.no_grad():
                            ref = policy_logprobs(reference, part).logprobs
                out = ppo_loss(
                    current.logprobs,
                    part.logprobs.to(current.logprobs.device),
                    advantages[micro].to(current.logprobs.device),
                    part.rationale_mask.to(current.logprobs.device),
                    clip_low=algorithm.clip_low,
                    clip_high=algorithm.clip_high,
                    aggregation=algorithm.aggregation,
                    normaliser=max(normaliser, 1.0),
                    ref_logprobs=ref,
                    kl_coef=algorithm.kl_coef,
                    kl_estimator=algorithm.kl_estimator,
                    entropy=current.entropy,
                    entropy_coef=algorithm.entropy_coef,
                )
                out.loss.backward()
                # Each micro-batch's terms are already divided by the mini-batch size: they add up.
                totals["policy_loss"] += float(out.policy_loss)
                totals["kl"] += float(out.kl)
                part_tokens = float(part.rationale_mask.sum())
                entropy_sum += float(current.entropy.detach().sum())
                entropy_tokens += part_tokens
                totals["clip_fraction"] += float(out.clip_fraction) * part_tokens
                stats.ratio_max = max(stats.ratio_max, float(out.ratio_max))
            # With no rows (every advantage zero) there are no gradients and AdamW's step is a no-op,
            # but the schedule still advances: it counts update slots, not non-empty updates.
            totals["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip))
            optimizer.step()
            scheduler.step()
            stats.updates += 1
    tokens = float(batch.rationale_mask[trained].sum())
    stats.policy_loss = totals["policy_loss"] / stats.updates
    stats.kl = totals["kl"] / stats.updates
    stats.grad_norm = totals["grad_norm"] / stats.updates  # mean over the step's optimizer updates
    stats.entropy = entropy_sum / max(entropy_tokens, 1.0)
    stats.clip_fraction = totals["clip_fraction"] / max(tokens * algorithm.ppo_epochs, 1.0)
    model.eval()
    return stats


@torch.no_grad()
def _logprobs_in_chunks(model, batch: RolloutBatch, rows: torch.Tensor, cfg: TrainConfig, autocast) -> torch.Tensor:
    logprobs = batch.logprobs.clone()
    for micro in rows.split(cfg.trainer.micro_batch_size) if len(rows) else ():
        part = batch.select(micro)
        with autocast:
            values = policy_logprobs(model, part).logprobs.float().to(logprobs.device)
        logprobs[micro, : values.shape[1]] = values
    return logprobs


def mean_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR, first_update: int, count: int) -> float:
    """Mean rate of optimizer updates ``first_update .. first_update + count - 1``: LambdaLR's base rate
    times its factor, which is what ``scheduler.get_last_lr()`` showed before each of those updates."""
    base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
    return sum(base * factor(update) for update in range(first_update, first_update + count)) / max(count, 1)


def step_metrics(step, batch: RolloutBatch, rewards, advantages, key, update: UpdateStats, step_seconds, rollout_seconds, lr) -> dict[str, Any]:
    trained = rewards.trained
    lengths = batch.rationale_lengths.float()
    metrics: dict[str, Any] = {"step": step}
    for name, value in {"total": rewards.total, **rewards.terms}.items():
        metrics[f"reward/{name}_mean"] = float(value[trained].mean())
        metrics[f"reward/{name}_std"] = float(value[trained].std(unbiased=False))
        metrics[f"reward/{name}_within_group_std"] = float(within_group_std(value, key, trained))
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
            "optim/grad_norm": update.grad_norm,
            "optim/lr": lr,  # mean over the step's optimizer updates
            "rollout/rationale_length_mean": float(lengths.mean()),
            "rollout/rationale_length_max": float(lengths.max()),
            "rollout/truncation_rate": float(batch.truncated.float().mean()),
            "rollout/input_truncation_rate": float(batch.input_truncated.float().mean()),
            "rollout/rows": len(batch),
            "time/step_seconds": step_seconds,
            "time/rollout_seconds": rollout_seconds,
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

