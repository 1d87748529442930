"""The training loop, shared by every objective.

    batch of examples -> objective.step (GRACE: rollouts, rewards, PPO update; contrastive / SimCSE:
    InfoNCE on prompt embeddings; SFT: NLL of demonstrated rationales) -> held-out scores and guards
    -> metrics -> checkpoint

The trainer owns what objectives share: settings and data checked before any weights load, the data
stream and the held-out set (grace/training/heldout.py), model loading, optimizer and schedule, logging, the
guards (grace/training/guards.py), checkpoints with exact resume. ``train`` reads top to bottom. The loop is
deterministic on CPU for a given seed: data order, rollout seeds and the optimizer state are all
functions of (seed, step) or stored in the checkpoint with the RNG states, so 2 steps + resume + 2
steps == 4 steps for every objective.

Under ``torchrun --nproc_per_node=N`` every rank runs this function: each reads the same global batch
and the objective works on its share; the model is wrapped for DDP or sharded by FSDP (``grace.distributed.parallel``,
``trainer.strategy``), LoRA adapters are injected first (``grace.distributed.lora``); rank 0 alone writes the run's
files, logs and checkpoints (``grace.distributed.ranks``) and decides what the guards decide. Checkpoints hold
the whole model and a named optimizer state, so a run resumes with another world size.
"""
from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.config import ConfigError, TrainConfig, example_kind, resolve_train_file, token_budgets
from grace.data import DataError, DataIssue, LoadedData, load_examples
from grace.data.stream import ExampleStream
from grace.distributed.launch import launched_by_torchrun
from grace.distributed.lora import Lora
from grace.distributed.parallel import Parallel, check_world_size, resolve_strategy
from grace.distributed.ranks import World, barrier, broadcast, init_from_env, on_main, seed_step, world
from grace.model.loading import load_policy, load_tokenizer
from grace.model.prompts import PromptTemplate, text_token_ids
from grace.numerics.finite import NonFiniteError
from grace.objectives import REGISTRY, Objective, TrainContext, build_objective
from grace.objectives.optimizer import make_scheduler, mean_learning_rate
from grace.training.checkpoint import (
    checkpoint_root,
    encoder_name,
    latest_checkpoint,
    load_trainer_state,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from grace.training.guards import Finding, Watch
from grace.training.heldout import HeldOutSet, heldout_from_config, score
from grace.training.nonfinite import Diverged, SkippedUpdates, check_finite_weights, finite_metrics, stopped_message
from grace.training.preemption import Preemption, clear_marker, resume_setting
from grace.training.restart import check_output_dir, find_resume_checkpoint
from grace.training.resume import check_resume, record_start, resolved_config, starting_model
from grace.training.run_logger import METRICS_FILE, RunLogger, read_metrics
from grace.training.validation import validate


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path
    steps_done: int
    stopped_by: Finding | None = None  # the guard that ended the run early (trainer.guards.*.action=stop)


def train(
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    run_name: str | None = None,
    run_group: str | None = None,
    after_training: Callable[[TrainResult, RunLogger], None] | None = None,
) -> TrainResult:
    """``after_training(result, logger)`` runs after the last step, before the run's logger closes: the
    final evaluation goes into the same wandb run, and its failure is the run's exit status."""
    run = start_run(cfg, Path(output_dir))  # settings and directory: checked before anything loads
    data = load_data(cfg, run)  # every example checked with the tokenizer alone, before the weights load
    policy = load_model(cfg, run, data)
    skips = SkippedUpdates(cfg.trainer.max_skipped_updates)  # updates skipped in a row (non-finite loss or gradient)
    optimizer, scheduler, step, position = make_optimizer(cfg, run, policy, skips)
    logger = on_main(lambda: open_logger(cfg, run, step, run_name, run_group))  # rank 0 logs; elsewhere a no-op
    watch = watch_run(cfg, run, data, policy)
    saver = Checkpointer(cfg, run, policy, optimizer, scheduler, watch, run_label=run_name or run.output_dir.name, skips=skips)

    last = latest_checkpoint(run.output_dir)
    exit_code, stopped_by = 1, None
    objective = policy.objective
    label, shown = objective.progress_metric
    preemption = Preemption().__enter__()  # SIGTERM / SIGUSR1: finish the step, checkpoint, exit to be requeued
    try:
        if step == 0 and (scores := watch.evaluate(0)):  # the starting model's held-out scores
            watch.check(start := {"step": 0, **scores})
            logger.log_step(start)
        bar = cfg.logger.progress_bar and run.layout.is_main
        progress = tqdm(total=cfg.trainer.max_steps, initial=step, desc=objective.name, disable=not bar, dynamic_ncols=True)
        while step < cfg.trainer.max_steps:
            started = time.perf_counter()
            examples = data.stream.batch_at(position)  # the global batch: the same on every rank
            position += len(examples)
            step += 1
            first_update = scheduler.last_epoch  # the rate logged is the one this step's updates used
            seed_step(cfg.seed, step)  # dropout and other global randomness: per (step, rank)

            try:
                result = objective.step(step, examples, optimizer, scheduler)
            except NonFiniteError as error:  # a reward component's NaN, weights an update overflowed
                raise Diverged(stopped_message(error, step, last)) from error

            step_seconds = time.perf_counter() - started
            metrics = {"step": step, **result.metrics, "optim/skipped_updates": result.skipped_updates}
            if result.skipped_updates:  # a skipped update's NaN loss describes no update: left out of the log
                metrics = finite_metrics(metrics)
            metrics["optim/lr"] = mean_learning_rate(scheduler, first_update, result.updates)  # mean over the step's updates
            metrics["time/step_seconds"] = step_seconds
            metrics.update(watch.evaluate(step))  # held-out eval/* every trainer.eval_every steps
            verdict = broadcast(watch.check(metrics))  # the guards: warnings, guard/* flags, a stop, a new best held-out score
            logger.log_step(metrics)
            if result.rationales and (step == 1 or step % cfg.trainer.rationale_log_every == 0):
                logger.log_rationales(step, result.rationales)
            if (reason := skips.record(step, result.skipped_updates, result.updates)) is not None:
                raise Diverged(stopped_message(reason, step, last))
            preempted = preemption.requested()  # every rank agrees: one rank's signal stops all after this step
            if verdict.best or verdict.stop or preempted or step % cfg.trainer.save_every == 0 or step == cfg.trainer.max_steps:
                last = saver.save(step, position)
            if preempted:
                barrier()  # the checkpoint is complete before any rank leaves
                preemption.hand_over(run.output_dir, step, last, run.layout.is_main)
            progress.update(1)
            progress.set_postfix({label: f"{metrics.get(shown, math.nan):.3f}", "step_s": f"{step_seconds:.1f}"})
            if (stopped_by := verdict.stop) is not None:
                break
        progress.close()
        result = TrainResult(run.output_dir, last, step, stopped_by)
        barrier()  # the last checkpoint is written before any rank leaves
        if after_training is not None and run.layout.is_main:  # the final evaluation: rank 0 alone
            after_training(result, logger)
        exit_code = 0
    finally:
        preemption.__exit__()
        logger.close(exit_code)
    return result


# ---------------------------------------------------------------------- the stages before the first step


@dataclass
class RunStart:
    layout: World  # this process's place among the ranks
    output_dir: Path
    resume_from: Path | None  # the checkpoint a resume continues, if any
    start_model: str  # model.source as resolved at the first start: the KL reference for good
    device: torch.device

    @property
    def policy_source(self) -> str:
        return str(self.resume_from or self.start_model)


def start_run(cfg: TrainConfig, output_dir: Path) -> RunStart:
    """Settings, output directory and resume point, all checked before the weights load (minutes for a
    large backbone, wasted if line 9000 of the data is bad); rank 0 records the start."""
    validate(cfg)
    layout = init_from_env()  # under torchrun: this rank's place (grace-train has joined the group already)
    check_world_size(cfg, layout)
    resume = resume_setting(cfg.trainer.resume, output_dir)  # a preempted run's requeued command continues it
    check_output_dir(cfg, output_dir, resume)
    resume_from = find_resume_checkpoint(cfg, output_dir, resume)
    check_resume(cfg, resume_from)  # the settings it was trained with, against these
    barrier()  # every rank has looked at the directory before rank 0 writes into it
    if layout.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        record_start(cfg, output_dir, resume_from)  # config.yaml, and configs/start-N.yaml of every start
        clear_marker(output_dir)  # a preempted run has continued: a later fresh start must not resume by mistake
    # Pinned by rank 0 at the first start, the same on every rank.
    start_model = broadcast(starting_model(cfg, output_dir, resume_from) if layout.is_main else None)
    device = resolve_device(cfg.model.device)
    torch.manual_seed(cfg.seed)
    return RunStart(layout, output_dir, resume_from, start_model, device)


@dataclass
class RunData:
    tokenizer: PreTrainedTokenizerBase
    template: PromptTemplate
    stream: ExampleStream  # the training examples, batch by batch
    heldout: HeldOutSet | None


def load_data(cfg: TrainConfig, run: RunStart) -> RunData:
    """Every example checked against the prompt budget, which needs only the tokenizer."""
    tokenizer = load_tokenizer(run.policy_source, trust_remote_code=cfg.model.trust_remote_code)
    try:
        template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    except ValueError as error:  # no chat template: a base model, not an instruct model
        raise ConfigError(f"model.source={cfg.model.source!r}: {error}") from None
    loaded = read_examples(cfg, tokenizer, template, resolve_train_file(cfg), example_kind(cfg), cfg.data.split, cfg.data.limit)
    examples, heldout = heldout_from_config(
        cfg, loaded.examples, lambda source, split: read_examples(cfg, tokenizer, template, source, cfg.mode, split).examples
    )
    if run.layout.is_main:
        print(loaded.summary())
        if heldout is not None:
            print(heldout.description)
    if len(examples) < cfg.trainer.batch_size:
        reason = f"only {len(examples)} usable examples, fewer than trainer.batch_size={cfg.trainer.batch_size}: lower that"
        raise DataError(DataIssue(loaded.source, None, None, reason), hint=None)
    return RunData(tokenizer, template, ExampleStream(examples, cfg.trainer.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle), heldout)


@dataclass
class Policy:
    model: PreTrainedModel  # the trained model, unwrapped
    tokenizer: PreTrainedTokenizerBase
    parallel: Parallel  # the model as the strategy wraps it (one process: itself)
    adapters: Lora | None  # with model.lora.r > 0
    autocast: AbstractContextManager  # bf16 autocast, or nothing
    objective: Objective


def load_model(cfg: TrainConfig, run: RunStart, data: RunData) -> Policy:
    """The policy (from the checkpoint when resuming; with LoRA the starting model and the checkpoint's
    adapter), wrapped for the strategy; a frozen reference only if KL is actually used: the starting model
    (e.g. the SFT warm start), also after a resume; and the objective built around them."""
    lora = cfg.model.lora.r > 0
    model, tokenizer = load_policy(
        run.start_model if lora else run.policy_source, dtype=cfg.model.dtype, device=run.device,
        trust_remote_code=cfg.model.trust_remote_code,
    )  # fmt: skip
    adapters = Lora(model, cfg.model.lora, run.start_model) if lora else None
    if adapters is not None and run.resume_from is not None:
        adapters.load_adapter(run.resume_from)
    check_finite_weights(model, f"the model to train ({run.policy_source}) is unusable")  # e.g. a diverged run's checkpoint
    if cfg.model.gradient_checkpointing:  # renamed in later transformers 5 releases, where the old name warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    parallel = Parallel(model, resolve_strategy(cfg.trainer.strategy, run.layout), reads_logits=REGISTRY[cfg.objective.name].reads_logits)
    reference = None
    if cfg.algorithm.kl_coef > 0:  # with LoRA, the policy with its adapter off: no second copy of the model
        if adapters is not None:
            reference = adapters.without_adapter(parallel.module)
        else:
            reference_model, _ = load_policy(run.start_model, dtype=cfg.model.dtype, device=run.device, trust_remote_code=cfg.model.trust_remote_code)
            reference = parallel.frozen(reference_model)
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16) if cfg.trainer.precision == "bf16" else nullcontext()
    objective = build_objective(TrainContext(cfg, model, tokenizer, data.template, run.device, autocast, reference, parallel))
    return Policy(model, tokenizer, parallel, adapters, autocast, objective)


def make_optimizer(
    cfg: TrainConfig, run: RunStart, policy: Policy, skips: SkippedUpdates | None = None
) -> tuple[torch.optim.Optimizer, LRScheduler, int, int]:
    """(optimizer, scheduler, step, data position): fresh, or as the resumed checkpoint left them, with its
    RNG states (the last thing restored, so the first step draws what the uninterrupted run drew) and its
    count of updates skipped in a row (into ``skips``)."""
    optimizer = torch.optim.AdamW(policy.parallel.trainable_parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, policy.objective.updates_per_step())
    if run.resume_from is None:
        return optimizer, scheduler, 0, 0
    state = load_trainer_state(run.resume_from)
    policy.parallel.load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    policy.objective.load_state_dict(state.get("objective_state", {}))
    if skips is not None:
        skips.load_state_dict(state.get("skipped_updates", {}))  # absent before 0.3: none in a row
    restore_rng_state(state["rng"])
    if run.layout.is_main:
        print(f"resumed from {run.resume_from} at step {state['step']}")
    return optimizer, scheduler, state["step"], state["data_position"]


def open_logger(cfg: TrainConfig, run: RunStart, step: int, run_name: str | None, run_group: str | None) -> RunLogger:
    return RunLogger(
        run.output_dir,
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


def watch_run(cfg: TrainConfig, run: RunStart, data: RunData, policy: Policy) -> Watch:
    """The held-out evaluation and the guards, reading the metrics history logged so far (a resumed run
    judges as the uninterrupted one would)."""

    def evaluate_heldout() -> dict[str, float]:  # on every rank: under FSDP the rollout gathers the whole model
        with policy.parallel.rollout(), policy.autocast:
            return score(data.heldout, policy.model, policy.tokenizer, data.template, policy.objective.embedding,
                         batch_size=cfg.trainer.heldout.batch_size, options=cfg.generation,
                         query_embedding=policy.objective.query_embedding)  # fmt: skip

    return Watch(
        cfg.trainer, read_metrics(run.output_dir / METRICS_FILE), evaluate_heldout if data.heldout is not None else None,
        score_key=data.heldout.primary if data.heldout is not None else None, training_key=policy.objective.training_score,
    )  # fmt: skip


@dataclass
class Checkpointer:
    """Writes ``checkpoints/step-N`` with everything an exact resume needs."""

    cfg: TrainConfig
    run: RunStart
    policy: Policy
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    watch: Watch
    run_label: str  # in full: the encoder's name is cut short to serve as a folder name
    skips: SkippedUpdates | None = None  # saved with the state, so a resume counts on

    def save(self, step: int, position: int) -> Path:
        """Every rank takes part: under FSDP the weights and the optimizer state are gathered to rank 0. Weights
        holding NaN or an infinity are never saved (``NonFiniteError``, on every rank)."""
        policy, output_dir = self.policy, self.run.output_dir
        check_finite_weights(policy.model, f"refusing to write checkpoint step-{step} of {output_dir}")
        weights, adapter = policy.adapters.export(policy.parallel) if policy.adapters is not None else (policy.parallel.export_model(), None)
        optimizer_state = policy.parallel.optimizer_state(self.optimizer)
        name = encoder_name(self.run_label, step)
        if not self.run.layout.is_main:
            return checkpoint_root(output_dir) / f"step-{step}"
        state = {
            "optimizer": optimizer_state,  # keyed by parameter name: loads with any world size
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "data_position": position,
            "rng": rng_state(),
            "run_name": self.run_label,
            "objective": policy.objective.name,
            "objective_state": policy.objective.state_dict(),
            "world_size": self.run.layout.size,  # for the record: a resume may use another
            "skipped_updates": self.skips.state_dict() if self.skips is not None else {},
        }
        saved = save_checkpoint(
            output_dir, step, weights, policy.tokenizer, policy.objective.embedding, state, keep_last=self.cfg.trainer.keep_last,
            name=name, config=resolved_config(self.cfg), adapter=adapter, protect=self.watch.protected(checkpoint_root(output_dir)),
            query_embedding=policy.objective.query_embedding,
        )  # fmt: skip
        self.watch.record_best(output_dir, saved)
        return saved


# ---------------------------------------------------------------------- helpers



def read_examples(
    cfg: TrainConfig, tokenizer, template: PromptTemplate, source: str, kind: str, split: str, limit: int | None = None
) -> LoadedData:
    """``kind`` examples of ``source``, each text checked against the prompt budget (and a demonstration's
    rationale against the rationale length), bad ones handled as ``data.on_error`` says."""
    prompt_budget = cfg.embedding.max_prompt_tokens - template.overhead
    return load_examples(
        source, kind, on_error=cfg.data.on_error, token_count=lambda text: len(text_token_ids(tokenizer, text)),
        max_tokens=token_budgets(cfg, prompt_budget) if kind == example_kind(cfg) else prompt_budget,
        limit=limit, text_field=cfg.data.text_field, split=split,
    )  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one. Under torchrun a bare ``cuda`` is the rank's own device (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", world().local_rank)
    return device
