"""The training loop, shared by every objective.

    batch of examples -> objective.step (GRACE: rollouts, rewards, PPO update; contrastive / SimCSE:
    InfoNCE on prompt embeddings; SFT: NLL of demonstrated rationales) -> held-out scores and guards
    -> metrics -> checkpoint

The trainer owns what objectives share: settings and data checked before any weights load, the data
stream and the held-out set (grace/heldout.py), model loading, optimizer and schedule, logging, the
guards (grace/guards.py), checkpoints with exact resume. ``train`` reads top to bottom. The loop is
deterministic on CPU for a given seed: data order, rollout seeds and the optimizer state are all
functions of (seed, step) or stored in the checkpoint with the RNG states, so 2 steps + resume + 2
steps == 4 steps for every objective.

Under ``torchrun --nproc_per_node=N`` every rank runs this function: each reads the same global batch
and the objective works on its share; the model is wrapped for DDP or sharded by FSDP (``grace.parallel``,
``trainer.strategy``), LoRA adapters are injected first (``grace.lora``); rank 0 alone writes the run's
files, logs and checkpoints (``grace.distributed``) and decides what the guards decide. Checkpoints hold
the whole model and a named optimizer state, so a run resumes with another world size.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

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
from grace.config import ConfigError, TrainConfig, example_kind, resolve_train_file, token_budgets
from grace.validation import validate
from grace.data import DataError, DataIssue, LoadedData, load_examples
from grace.data.stream import ExampleStream
from grace.distributed import barrier, broadcast, init_from_env, launched_by_torchrun, on_main, seed_step, world
from grace.guards import Finding, Watch
from grace.heldout import heldout_from_config, score
from grace.lora import Lora
from grace.models import load_policy, load_tokenizer
from grace.objectives import REGISTRY, TrainContext, build_objective
from grace.optim import make_scheduler, mean_learning_rate
from grace.parallel import Parallel, check_world_size, resolve_strategy
from grace.prompts import PromptTemplate, text_token_ids
from grace.resume import check_resume, record_start, resolved_config, starting_model
from grace.sweep import TRAINING_SCORE, read_metrics
from grace.tracking import METRICS_FILE, RunLogger


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
    # Settings, output directory and data are all checked before the weights load (minutes for a large
    # backbone, wasted if line 9000 of the data is bad).
    validate(cfg)
    layout = init_from_env()  # under torchrun: this rank's place (grace-train has joined the group already)
    check_world_size(cfg, layout)
    output_dir = Path(output_dir)
    check_output_dir(cfg, output_dir)
    resume_from = find_resume_checkpoint(cfg, output_dir)
    check_resume(cfg, resume_from)  # the settings it was trained with, against these
    barrier()  # every rank has looked at the directory before rank 0 writes into it
    if layout.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        record_start(cfg, output_dir, resume_from)  # config.yaml, and configs/start-N.yaml of every start
    # model.source as resolved at the first start (pinned by rank 0), the KL reference for good
    start_model = broadcast(starting_model(cfg, output_dir, resume_from) if layout.is_main else None)
    policy_source = str(resume_from or start_model)
    device = resolve_device(cfg.model.device)
    torch.manual_seed(cfg.seed)

    # Data: every example checked against the prompt budget, which needs only the tokenizer.
    tokenizer = load_tokenizer(policy_source, trust_remote_code=cfg.model.trust_remote_code)
    try:
        template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    except ValueError as error:  # no chat template: a base model, not an instruct model
        raise ConfigError(f"model.source={cfg.model.source!r}: {error}") from None
    loaded = read_examples(cfg, tokenizer, template, resolve_train_file(cfg), example_kind(cfg), cfg.data.split, cfg.data.limit)
    examples, heldout = heldout_from_config(
        cfg, loaded.examples, lambda source, split: read_examples(cfg, tokenizer, template, source, cfg.mode, split).examples
    )
    if layout.is_main:
        print(loaded.summary())
        if heldout is not None:
            print(heldout.description)
    if len(examples) < cfg.trainer.batch_size:
        reason = f"only {len(examples)} usable examples, fewer than trainer.batch_size={cfg.trainer.batch_size}: lower that"
        raise DataError(DataIssue(loaded.source, None, None, reason), hint=None)
    stream = ExampleStream(examples, cfg.trainer.batch_size, seed=cfg.seed, shuffle=cfg.data.shuffle)

    # Policy (from the checkpoint when resuming; with LoRA the starting model and the checkpoint's adapter),
    # wrapped for the strategy; a frozen reference only if KL is actually used: the starting model (e.g. the
    # SFT warm start), also after a resume.
    lora = cfg.model.lora.r > 0
    model, tokenizer = load_policy(
        start_model if lora else policy_source, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code
    )
    adapters = Lora(model, cfg.model.lora, start_model) if lora else None
    if adapters is not None and resume_from is not None:
        adapters.load_adapter(resume_from)
    if cfg.model.gradient_checkpointing:  # renamed in later transformers 5 releases, where the old name warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    parallel = Parallel(model, resolve_strategy(cfg.trainer.strategy, layout), reads_logits=REGISTRY[cfg.objective.name].reads_logits)
    reference = None
    if cfg.algorithm.kl_coef > 0:  # with LoRA, the policy with its adapter off: no second copy of the model
        if adapters is not None:
            reference = adapters.without_adapter(parallel.module)
        else:
            reference_model, _ = load_policy(start_model, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
            reference = parallel.frozen(reference_model)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.trainer.precision == "bf16" else nullcontext()
    objective = build_objective(TrainContext(cfg, model, tokenizer, template, device, autocast, reference, parallel))

    optimizer = torch.optim.AdamW(parallel.trainable_parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, objective.updates_per_step())
    step, position = 0, 0
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        parallel.load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        objective.load_state_dict(state.get("objective_state", {}))
        step, position = state["step"], state["data_position"]
        restore_rng_state(state["rng"])
        if layout.is_main:
            print(f"resumed from {resume_from} at step {step}")

    run_label = run_name or output_dir.name
    logger = on_main(  # rank 0 writes metrics, rationales and wandb; the other ranks' calls do nothing
        lambda: RunLogger(
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
    )

    def evaluate_heldout() -> dict[str, float]:  # on every rank: under FSDP the rollout gathers the whole model
        with parallel.rollout(), autocast:
            return score(heldout, model, tokenizer, template, objective.embedding,
                         batch_size=cfg.trainer.heldout.batch_size, options=cfg.generation)

    watch = Watch(
        cfg.trainer, read_metrics(output_dir / METRICS_FILE), evaluate_heldout if heldout is not None else None,
        score_key=heldout.primary if heldout is not None else None, training_key=TRAINING_SCORE[cfg.objective.name],
    )  # fmt: skip

    def checkpoint(at_step: int) -> Path:
        # Every rank takes part: under FSDP the weights and the optimizer state are gathered to rank 0.
        weights, adapter = adapters.export(parallel) if adapters is not None else (parallel.export_model(), None)
        optimizer_state = parallel.optimizer_state(optimizer)
        name = encoder_name(run_label, at_step)
        if not layout.is_main:
            return checkpoint_root(output_dir) / f"step-{at_step}"
        state = {
            "optimizer": optimizer_state,  # keyed by parameter name: loads with any world size
            "scheduler": scheduler.state_dict(),
            "step": at_step,
            "data_position": position,
            "rng": rng_state(),
            "run_name": run_label,  # in full: the encoder's name is cut short to serve as a folder name
            "objective": objective.name,
            "objective_state": objective.state_dict(),
            "world_size": layout.size,  # for the record: a resume may use another
        }
        saved = save_checkpoint(
            output_dir, at_step, weights, tokenizer, objective.embedding, state, keep_last=cfg.trainer.keep_last, name=name,
            config=resolved_config(cfg), adapter=adapter, protect=watch.protected(checkpoint_root(output_dir)),
        )
        watch.record_best(output_dir, saved)
        return saved

    last = latest_checkpoint(output_dir)
    exit_code, stopped_by = 1, None
    label, shown = objective.progress_metric
    try:
        if step == 0 and (scores := watch.evaluate(0)):  # the starting model's held-out scores
            watch.check(start := {"step": 0, **scores})
            logger.log_step(start)
        bar = cfg.logger.progress_bar and layout.is_main
        progress = tqdm(total=cfg.trainer.max_steps, initial=step, desc=objective.name, disable=not bar, dynamic_ncols=True)
        while step < cfg.trainer.max_steps:
            started = time.perf_counter()
            examples = stream.batch_at(position)  # the global batch: the same on every rank
            position += len(examples)
            step += 1
            first_update = scheduler.last_epoch  # the rate logged is the one this step's updates used
            seed_step(cfg.seed, step)  # dropout and other global randomness: per (step, rank)

            result = objective.step(step, examples, optimizer, scheduler)

            step_seconds = time.perf_counter() - started
            metrics = {"step": step, **result.metrics}
            metrics["optim/lr"] = mean_learning_rate(scheduler, first_update, result.updates)  # mean over the step's updates
            metrics["time/step_seconds"] = step_seconds
            metrics.update(watch.evaluate(step))  # held-out eval/* every trainer.eval_every steps
            verdict = broadcast(watch.check(metrics))  # the guards: warnings, guard/* flags, a stop, a new best held-out score
            logger.log_step(metrics)
            if result.rationales and (step == 1 or step % cfg.trainer.rationale_log_every == 0):
                logger.log_rationales(step, result.rationales)
            if verdict.best or verdict.stop or step % cfg.trainer.save_every == 0 or step == cfg.trainer.max_steps:
                last = checkpoint(step)
            progress.update(1)
            progress.set_postfix({label: f"{metrics[shown]:.3f}", "step_s": f"{step_seconds:.1f}"})
            if (stopped_by := verdict.stop) is not None:
                break
        progress.close()
        result = TrainResult(output_dir, last, step, stopped_by)
        barrier()  # the last checkpoint is written before any rank leaves
        if after_training is not None and layout.is_main:  # the final evaluation: rank 0 alone
            after_training(result, logger)
        exit_code = 0
    finally:
        logger.close(exit_code)
    return result


# ---------------------------------------------------------------------- stages


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
