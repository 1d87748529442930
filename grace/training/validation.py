"""Checks of a training configuration that the schema cannot express: settings legal one by one but
impossible together (GRPO with one sample per text, a batch that does not split into mini-batches, a
held-out set larger than the data, ...), run by ``validate`` before any model or data is loaded, each with a
message that says which keys to change. The schema itself is ``grace.config``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any

from grace.config import (
    OBJECTIVES,
    RATIONALE_ROLES,
    AlgorithmConfig,
    ConfigError,
    TrainConfig,
    example_kind,
    resolve_train_file,
    reward_components,
    role_max_new_tokens,
    role_samples,
    rollout_roles,
    trained_roles,
)
from grace.data.readers import check_source
from grace.model.pooling import POOLING_METHODS
from grace.model.sources import ModelSourceError, resolve_source
from grace.objectives.policy_gradient.advantages import ESTIMATORS, NORMALIZATIONS
from grace.objectives.policy_gradient.ppo_loss import AGGREGATIONS, KL_ESTIMATORS
from grace.objectives.policy_gradient.rollout_correction import CORRECTIONS
from grace.rewards import MODES, VARIANTS, ComponentError, RewardFunction

STRATEGIES = ("auto", "ddp", "fsdp")  # grace/distributed/parallel.py


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}")


def validate(cfg: TrainConfig) -> None:
    """Reject impossible settings before anything expensive happens."""
    _one_of("mode", cfg.mode, MODES)
    _one_of("objective.name", cfg.objective.name, OBJECTIVES)
    _one_of("reward.variant", cfg.reward.variant, VARIANTS)
    _one_of("algorithm.estimator", cfg.algorithm.estimator, ESTIMATORS)
    _one_of("algorithm.aggregation", cfg.algorithm.aggregation, AGGREGATIONS)
    _one_of("algorithm.kl_estimator", cfg.algorithm.kl_estimator, KL_ESTIMATORS)
    _one_of("algorithm.normalize", cfg.algorithm.normalize, NORMALIZATIONS)
    _one_of("algorithm.rollout_correction", cfg.algorithm.rollout_correction, CORRECTIONS)
    _one_of("embedding.rationales", cfg.embedding.rationales, RATIONALE_ROLES)
    _one_of("embedding.pooling", cfg.embedding.pooling, POOLING_METHODS)
    _one_of("model.dtype", cfg.model.dtype, ("float32", "bfloat16", "float16"))
    _one_of("trainer.precision", cfg.trainer.precision, ("fp32", "bf16"))
    _one_of("trainer.strategy", cfg.trainer.strategy, STRATEGIES)
    _one_of("trainer.schedule", cfg.trainer.schedule, ("constant", "warmup_constant", "cosine"))
    _one_of("data.on_error", cfg.data.on_error, ("raise", "skip"))
    _one_of("logger.backend", cfg.logger.backend, ("wandb", "none"))
    _one_of("logger.mode", cfg.logger.mode, ("offline", "online", "disabled"))

    _check_trainer(cfg)
    _check_lora(cfg)
    if cfg.objective.name == "grace":
        _check_policy_gradient(cfg)
    elif cfg.objective.name == "sft":
        _refuse_query_rationales(cfg)
        _check_sft(cfg)
    else:
        _refuse_query_rationales(cfg)
        _check_embedding_objective(cfg)
    _check_sweep(cfg)

    train_file = resolve_train_file(cfg)
    kind = example_kind(cfg)
    try:
        check_source(train_file, kind, cfg.data.split)
    except (ValueError, OSError) as error:
        what = f"mode={cfg.mode}" if kind == cfg.mode else f"objective={cfg.objective.name} reads {kind}"
        raise ConfigError(f"data.train_file={train_file!r} ({what}, data.split={cfg.data.split}): {error}") from None


def _check_policy_gradient(cfg: TrainConfig) -> None:
    """objective=grace: rollouts, rewards and the PPO update."""
    _check_policy_options(cfg)  # first: embedding.rationales=queries changes which roles the checks below see
    if cfg.reward.tau <= 0:
        raise ConfigError(f"reward.tau={cfg.reward.tau} must be positive: it divides every similarity")
    try:  # imports every component's function and checks its parameters, before any model loads
        RewardFunction.from_config(reward_components(cfg), cfg.reward, cfg.mode)
    except ComponentError as error:
        raise ConfigError(str(error)) from None
    if cfg.objective.dropout > 0:
        raise ConfigError(
            f"objective.dropout={cfg.objective.dropout} with objective=grace would make the update's log-probs differ "
            "from the rollout's (sampled without dropout), so PPO ratios would not start at 1: set objective.dropout=0"
        )
    if cfg.algorithm.embedding_loss_coef < 0:
        raise ConfigError(f"algorithm.embedding_loss_coef={cfg.algorithm.embedding_loss_coef} must be >= 0 (0 switches it off)")
    if cfg.algorithm.embedding_loss_temperature <= 0:
        raise ConfigError(f"algorithm.embedding_loss_temperature={cfg.algorithm.embedding_loss_temperature} must be positive")
    if cfg.algorithm.estimator in ("grpo", "rloo"):
        for role in trained_roles(cfg):
            if role_samples(cfg, role) < 2:
                raise ConfigError(
                    f"algorithm={cfg.algorithm.estimator} compares the k rationales of each text, but the "
                    f"{role} role has k={role_samples(cfg, role)}: set rollout.num_samples (or "
                    f"rollout.{role}.num_samples) to 2 or more, or use algorithm=reinforce"
                )
    for role in ("query", "positive", "negative"):
        settings = getattr(cfg.rollout, role)
        if role_samples(cfg, role) < 1:
            raise ConfigError(f"rollout.{role}.num_samples must be at least 1")
        if settings.temperature < 0 or not 0 < settings.top_p <= 1:
            raise ConfigError(f"rollout.{role}: temperature must be >= 0 and top_p in (0, 1]")
    for role in rollout_roles(cfg):
        _check_role_decoding(cfg, role)
    if cfg.rollout.batch_size < 1:
        raise ConfigError(f"rollout.batch_size={cfg.rollout.batch_size} must be at least 1 (rows generated together)")
    if cfg.embedding.pooling == "input":
        raise ConfigError("embedding.pooling=input ignores the rationale, so rewards could not train it")
    t = cfg.trainer
    trained_rows = t.batch_size * sum(role_samples(cfg, r) for r in trained_roles(cfg))
    if cfg.algorithm.estimator == "reinforce" and trained_rows < 2:
        raise ConfigError("algorithm=reinforce with one trained rollout per step has no baseline: raise trainer.batch_size")
    if cfg.reward.variant == "contrastive" and t.batch_size < 2:
        raise ConfigError(
            "reward=contrastive needs trainer.batch_size >= 2: it contrasts each rollout with the other examples "
            "of the step, and with one example a positive's InfoNCE term is log(1) = 0 and the cross-group term "
            "is 0, leaving little but the clustering term (which rewards sameness). Raise trainer.batch_size"
        )
    if cfg.reward.variant == "paper" and t.batch_size < 2:
        warnings.warn(
            "reward=paper with trainer.batch_size=1: the cross-group term compares a group with the other groups "
            "of the step, so with one example it is always 0 (raise trainer.batch_size to use it)",
            stacklevel=3,
        )
    if cfg.algorithm.ppo_epochs < 1:
        raise ConfigError("algorithm.ppo_epochs must be at least 1")


def _check_policy_options(cfg: TrainConfig) -> None:
    """GDPO normalisation, the rollout correction, and rationales for queries only."""
    algorithm = cfg.algorithm
    if algorithm.normalize == "per_component" and algorithm.scale_by_std:
        raise ConfigError(
            "algorithm.normalize=per_component already divides each reward component by its own within-group std; "
            "algorithm.scale_by_std=true would divide the sum again: set algorithm.scale_by_std=false"
        )
    if not algorithm.rollout_correction_cap >= 1:
        raise ConfigError(f"algorithm.rollout_correction_cap={algorithm.rollout_correction_cap} must be >= 1: on-policy tokens have weight 1")
    if cfg.embedding.rationales != "queries":
        return
    if cfg.reward.variant == "paper":
        raise ConfigError(
            "embedding.rationales=queries embeds documents as plain text, so only the query role can be trained, but "
            "reward=paper trains the positives alone: use reward=contrastive (every role trained), or embedding.rationales=all"
        )
    if cfg.embedding.pooling == "rationale":
        raise ConfigError("embedding.pooling=rationale with embedding.rationales=queries: documents write no rationale to pool; use after_system")
    for role in ("positive", "negative"):
        settings = getattr(cfg.rollout, role)
        for key in ("num_samples", "max_new_tokens"):
            if getattr(settings, key) is not None:
                raise ConfigError(
                    f"rollout.{role}.{key}={getattr(settings, key)} with embedding.rationales=queries: {role} documents are embedded "
                    f"as plain text (one row, no rationale), so the setting would be ignored: remove it"
                )


def _refuse_query_rationales(cfg: TrainConfig) -> None:
    if cfg.embedding.rationales != "all":
        raise ConfigError(
            f"embedding.rationales={cfg.embedding.rationales} trains query rationales with the policy gradient, which "
            f"objective={cfg.objective.name} does not run: set objective=grace, or embedding.rationales=all"
        )


def _check_embedding_objective(cfg: TrainConfig) -> None:
    """objective=contrastive|simcse: InfoNCE on prompt embeddings, no rationale, no rollout."""
    name, objective = cfg.objective.name, cfg.objective
    needed = {"contrastive": "supervised", "simcse": "unsupervised"}[name]
    if cfg.mode != needed:
        other = {"contrastive": "simcse (single sentences)", "simcse": "contrastive (query, positive, negative triplets)"}[name]
        raise ConfigError(f"objective={name} trains on {needed} data: set mode={needed}, or use objective={other} for mode={cfg.mode}")
    if objective.temperature <= 0:
        raise ConfigError(f"objective.temperature={objective.temperature} must be positive: it divides every similarity")
    if not 0 <= objective.dropout < 1:
        raise ConfigError(f"objective.dropout={objective.dropout} must be in [0, 1)")
    if name == "simcse" and objective.dropout == 0:
        raise ConfigError(
            "objective=simcse with objective.dropout=0: both views of a sentence would be the same embedding, and the "
            "loss would only push different sentences apart. Set objective.dropout > 0 (conf/objective/simcse.yaml: 0.3)"
        )
    if cfg.embedding.pooling == "rationale":
        raise ConfigError(f"embedding.pooling=rationale: objective={name} writes no rationale; use after_system, input or last_token")
    per_update = cfg.trainer.mini_batch_size or cfg.trainer.batch_size
    if per_update < 2 and not (name == "contrastive" and objective.hard_negatives):
        raise ConfigError(
            f"objective={name} contrasts each example with the others of its update, but an update holds "
            f"{per_update} example: raise trainer.batch_size (or trainer.mini_batch_size) to 2 or more"
        )
    _refuse_policy_update_settings(cfg)


def _check_sft(cfg: TrainConfig) -> None:
    """objective=sft: token-mean NLL of demonstrated rationales, no rollout, no reward."""
    if cfg.data.train_file == "auto":
        raise ConfigError(
            "objective=sft reads demonstrations: set data.train_file to a .jsonl/.parquet file (or datasets directory) "
            "with fields text, rationale; `grace-sft sample` makes one from the current policy (rejection sampling)"
        )
    if role_max_new_tokens(cfg, "positive") < 2:
        raise ConfigError(f"rollout.max_new_tokens={role_max_new_tokens(cfg, 'positive')}: a demonstrated rationale needs room for a token and EOS")
    if cfg.embedding.pooling == "input":
        raise ConfigError("embedding.pooling=input ignores the rationale that objective=sft teaches: use after_system or rationale")
    if cfg.objective.dropout > 0:
        raise ConfigError(f"objective.dropout={cfg.objective.dropout} is for the contrastive and simcse objectives: set it to 0")
    _refuse_policy_update_settings(cfg)


def _refuse_policy_update_settings(cfg: TrainConfig) -> None:
    """Settings of the policy update that an objective without one would silently ignore (rollout and reward
    settings are ignored too, but model presets set them, so they cannot tell a user's intent)."""
    defaults = AlgorithmConfig()
    for key in ("embedding_loss_coef", "kl_coef", "entropy_coef", "ppo_epochs", "recompute_old_logprobs", "normalize", "rollout_correction"):
        value = getattr(cfg.algorithm, key)
        if value != getattr(defaults, key):
            raise ConfigError(
                f"algorithm.{key}={value} belongs to objective=grace's policy update, which objective={cfg.objective.name} does not run: remove it"
            )


def _check_trainer(cfg: TrainConfig) -> None:
    t = cfg.trainer
    for name in ("max_steps", "batch_size", "micro_batch_size", "save_every", "keep_last", "max_skipped_updates"):
        if getattr(t, name) < 1:
            raise ConfigError(f"trainer.{name}={getattr(t, name)} must be at least 1")
    if t.mini_batch_size is not None and (t.mini_batch_size < 1 or t.batch_size % t.mini_batch_size):
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a multiple of trainer.mini_batch_size={t.mini_batch_size}"
        )
    if t.lr <= 0 or t.grad_clip <= 0:
        raise ConfigError("trainer.lr and trainer.grad_clip must be positive")
    if t.warmup_steps < 0:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} must be >= 0")
    if t.warmup_steps > 0 and t.schedule == "constant":
        raise ConfigError(
            f"trainer.warmup_steps={t.warmup_steps} has no effect with trainer.schedule=constant: "
            "use trainer.schedule=warmup_constant (or cosine), or trainer.warmup_steps=0"
        )
    if t.resume not in ("none", "auto") and not Path(t.resume).is_dir():
        raise ConfigError(f"trainer.resume={t.resume!r}: no such checkpoint directory (or use 'auto' / 'none')")
    try:
        resolve_source(cfg.model.source)  # the very resolver load_policy uses, before it loads anything
    except ModelSourceError as error:
        raise ConfigError(f"model.source={cfg.model.source!r}: {error} (or a model=... preset)") from None
    _check_heldout(cfg)
    if cfg.data.limit is not None and cfg.data.limit < t.batch_size:
        raise ConfigError(f"data.limit={cfg.data.limit} is below trainer.batch_size={t.batch_size}: one step needs that many examples")


def _check_heldout(cfg: TrainConfig) -> None:
    t = cfg.trainer
    if t.eval_every < 0:
        raise ConfigError(f"trainer.eval_every={t.eval_every} must be >= 0 (0: no held-out evaluation)")
    if t.keep_best and t.eval_every == 0:
        raise ConfigError("trainer.keep_best=true keeps the checkpoint of the best held-out score: set trainer.eval_every > 0")
    if t.eval_every > 0:
        if t.heldout.size < 2 or t.heldout.batch_size < 1:
            raise ConfigError(f"trainer.heldout.size={t.heldout.size} must be at least 2 and batch_size at least 1")
        if t.heldout.source != "split":
            try:
                check_source(t.heldout.source, cfg.mode, t.heldout.split)
            except (ValueError, OSError) as error:
                raise ConfigError(f"trainer.heldout.source={t.heldout.source!r} (mode={cfg.mode}, split={t.heldout.split}): {error}") from None
    guards = t.guards
    for name in ("length", "repetition", "diversity", "reward_vs_heldout"):
        guard = getattr(guards, name)
        _one_of(f"trainer.guards.{name}.action", guard.action, ("off", "warn", "stop"))
        if guard.patience < 1:
            raise ConfigError(f"trainer.guards.{name}.patience={guard.patience} must be at least 1")
    if guards.length.baseline_steps < 1 or guards.diversity.baseline_steps < 1 or guards.reward_vs_heldout.window < 1:
        raise ConfigError("trainer.guards.*.baseline_steps and trainer.guards.reward_vs_heldout.window must be at least 1")
    if not guards.length.min_ratio < 1 < guards.length.max_ratio:
        raise ConfigError(f"trainer.guards.length: min_ratio={guards.length.min_ratio} must be below 1 and max_ratio={guards.length.max_ratio} above")
    if not 0 < guards.diversity.min_spread_ratio < 1:
        raise ConfigError(f"trainer.guards.diversity.min_spread_ratio={guards.diversity.min_spread_ratio} must be in (0, 1)")


def _check_lora(cfg: TrainConfig) -> None:
    lora = cfg.model.lora
    if lora.r < 0:
        raise ConfigError(f"model.lora.r={lora.r} must be >= 0 (0: no LoRA, every weight trains)")
    if lora.r == 0:
        return
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora.r > 0 needs peft: pip install 'grace-embed[lora]' (or pip install peft)")
    if lora.alpha <= 0:
        raise ConfigError(f"model.lora.alpha={lora.alpha} must be positive: the adapters' output is scaled by alpha / r")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout={lora.dropout} must be in [0, 1)")
    if not lora.target_modules:
        raise ConfigError("model.lora.target_modules is empty: name the layers to adapt (e.g. [q_proj,v_proj]) or use [all-linear]")
    _refuse_tied_targets(cfg)
    if cfg.objective.name == "grace" and lora.dropout > 0:
        raise ConfigError(
            f"model.lora.dropout={lora.dropout} with objective=grace would make the update's log-probs differ from the "
            "rollout's (sampled without dropout), so PPO ratios would not start at 1: set model.lora.dropout=0"
        )


def _refuse_tied_targets(cfg: TrainConfig) -> None:
    """An adapter on ``lm_head`` or ``embed_tokens`` of a model that ties them, refused before it loads when its
    config says so (tiny-random, the packaged SmolLM2, a model directory or run); ``Lora`` checks the loaded
    model itself for every other source and target (grace/distributed/lora.py)."""
    from grace.distributed.lora import TIED_NAMES, tied_target_error

    named = [t for t in cfg.model.lora.target_modules if t.rsplit(".", 1)[-1] in TIED_NAMES]
    if named and _ties_word_embeddings(cfg.model.source):
        partner = "embed_tokens" if named[0].rsplit(".", 1)[-1] == "lm_head" else "lm_head"
        raise tied_target_error(list(cfg.model.lora.target_modules), named[0], [partner])


def _ties_word_embeddings(source: str) -> bool:
    """Whether the model ``source`` names ties its output head to its input embeddings, as far as can be told
    without loading it (False when unknown: a hub id or a .gguf file is checked once loaded)."""
    try:
        resolved = resolve_source(source)
    except ModelSourceError:
        return False  # reported by the source check
    if resolved.kind in ("tiny-random", "packaged"):
        return True  # grace.model.loading.tiny_config and SmolLM2-135M-Instruct both tie
    if resolved.kind != "directory":
        return False
    try:
        return bool(json.loads((resolved.path / "config.json").read_text()).get("tie_word_embeddings", False))
    except (OSError, ValueError):
        return False


def _check_role_decoding(cfg: TrainConfig, role: str) -> None:
    """A trained role needs a rationale to train, and k rationales that can differ under a group baseline."""
    own = getattr(cfg.rollout, role).max_new_tokens is not None
    tokens, key = role_max_new_tokens(cfg, role), f"rollout.{role}.max_new_tokens" if own else "rollout.max_new_tokens"
    trained = role in trained_roles(cfg)
    if tokens < (1 if trained else 0):
        why = f"the {role} role is trained, so its rationale needs at least 1 token" if trained else "it must be >= 0"
        raise ConfigError(f"{key}={tokens}: {why}")
    k, temperature = role_samples(cfg, role), getattr(cfg.rollout, role).temperature
    if trained and temperature == 0 and k >= 2 and cfg.algorithm.estimator in ("grpo", "rloo"):
        raise ConfigError(
            f"rollout.{role}.temperature=0 decodes greedily, so the k={k} rationales of each {role} text are "
            f"identical and algorithm={cfg.algorithm.estimator} gives them zero advantage: the role would never "
            f"train. Set rollout.{role}.temperature > 0 (e.g. 1.0), or use algorithm=reinforce"
        )



def _check_sweep(cfg: TrainConfig) -> None:
    sweep = cfg.sweep
    _one_of("sweep.direction", sweep.direction, ("maximize", "minimize"))
    _one_of("sweep.reduce", sweep.reduce, ("last", "best", "mean"))
    if sweep.last_steps < 1:
        raise ConfigError(f"sweep.last_steps={sweep.last_steps} must be at least 1")
    if sweep.diverged_value is not None and not math.isfinite(sweep.diverged_value):
        raise ConfigError(f"sweep.diverged_value={sweep.diverged_value} must be finite: a NaN or inf ends an Optuna sweep")
    if sweep.metric != "auto" and "/" not in sweep.metric:
        raise ConfigError(
            f"sweep.metric={sweep.metric!r} is not a metric name: use auto, final_eval/mean, final_eval/<task> or a "
            "metrics.jsonl key such as reward/total_mean"
        )
    if sweep.metric.startswith("final_eval/") and not cfg.final_eval.enabled:
        raise ConfigError(f"sweep.metric={sweep.metric} reads the final evaluation: set final_eval.enabled=true")
