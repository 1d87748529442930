"""The typed training configuration: dataclasses registered with Hydra's ConfigStore.

Hydra merges ``conf/train.yaml`` and its groups into this schema, so a misspelt key is an error at
start-up ("Key 'max_stepz' is not in struct"). ``validate`` then checks the settings that are legal
one by one but impossible together (GRPO with one sample per text, a batch that does not split into
mini-batches, ...), before any model or data is loaded, with a message that says what to change.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grace.advantages import ESTIMATORS
from grace.data.readers import DEMONSTRATIONS, check_source
from grace.engine import GenerationOptions
from grace.loss import AGGREGATIONS, KL_ESTIMATORS
from grace.pooling import POOLING_METHODS
from grace.prompts import GRACE_SYSTEM_PROMPT
from grace.rewards import MODES, VARIANTS, ComponentError, RewardFunction
from grace.sources import ModelSourceError, resolve_source


@dataclass
class LoraSection:
    """LoRA adapters through peft (grace/lora.py); r = 0 trains every weight."""

    r: int = 0  # rank of the adapters; 0: no LoRA
    alpha: float = 16.0  # the adapters' output is scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input, in training forwards only
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or [all-linear]: every linear layer but the LM head


@dataclass
class ModelConfig:
    source: str = "packaged:smollm2-135m"  # any form grace.sources accepts: packaged name, directory, .gguf, hub id
    dtype: str = "float32"  # weights: float32 | bfloat16
    device: str = "auto"  # auto (cuda if available; under torchrun the rank's LOCAL_RANK device) | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: LoraSection = field(default_factory=LoraSection)


@dataclass
class RoleConfig:
    num_samples: Optional[int] = None  # None: rollout.num_samples
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: rollout.max_new_tokens


@dataclass
class RolloutConfig:
    num_samples: int = 4  # k: rationales per text for every role that does not set its own
    max_new_tokens: int = 256
    batch_size: int = 64  # rows generated together
    query: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=1.0))
    positive: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=1.0))
    negative: RoleConfig = field(default_factory=lambda: RoleConfig(temperature=1.0))


@dataclass
class EmbeddingSection:
    system_prompt: str = GRACE_SYSTEM_PROMPT
    pooling: str = "after_system"
    max_prompt_tokens: int = 1024


@dataclass
class ScheduleConfig:
    """A component's weight ramp: factor ``start_factor`` until ``start_step``, then linear to 1 over ``steps``."""

    start_factor: float = 0.0
    start_step: int = 0
    steps: int = 1


@dataclass
class ComponentConfig:
    """One reward component (grace/rewards/compose.py): contribution = clip(weight(step) * value, -cap, cap)."""

    _target_: Optional[str] = None  # dotted path of f(inputs, **params); None: the built-in of this name
    weight: float = 1.0
    cap: Optional[float] = None  # None: no cap
    schedule: Optional[ScheduleConfig] = None  # None: the weight is constant
    params: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the component


@dataclass
class RewardConfig:
    variant: str = "contrastive"  # contrastive | paper: the GRACE terms (the built-in component `grace`)
    tau: float = 0.1
    w_cluster: float = 0.2
    w_cross: float = 0.2
    # The reward is the sum of these components' contributions (name -> ComponentConfig's keys; built-ins:
    # grace, length, truncation, degenerate). Untyped here so that the command line can add one
    # (+reward.components.length={weight:0.01,params:{budget:64}}); `reward_components` checks each entry.
    components: Dict[str, Any] = field(default_factory=lambda: {"grace": asdict(ComponentConfig())})


@dataclass
class AlgorithmConfig:
    estimator: str = "grpo"  # grpo | rloo | reinforce
    scale_by_std: bool = False
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"  # token-mean | sequence-mean
    kl_coef: float = 0.0  # > 0 loads a frozen reference copy of the policy
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    # Recompute old log-probs with a full forward instead of taking them from the rollout; only worth it in
    # low precision, where cached decoding and a full forward round differently.
    recompute_old_logprobs: bool = False
    # > 0: add coef * InfoNCE of each rollout's pooled embedding (with gradient, from the update's forward)
    # against its detached in-batch partners (grace/embedding_loss.py). 0: the plain policy-gradient update.
    embedding_loss_coef: float = 0.0
    embedding_loss_temperature: float = 0.05


@dataclass
class ObjectiveConfig:
    """What a training step optimises (grace/objectives/): ``conf/objective/*.yaml``."""

    # grace (policy gradient on rationales) | contrastive (supervised InfoNCE) | simcse (unsupervised) |
    # sft (supervised fine-tuning on {text, rationale} demonstrations: grace-sft)
    name: str = "grace"
    temperature: float = 0.05  # InfoNCE temperature of contrastive and simcse (SimCSE's value)
    hard_negatives: bool = True  # contrastive: each triplet's negative joins the in-batch candidates
    # Attention dropout during the training forward of contrastive and simcse (SimCSE's two views need
    # it; Llama-family models train without dropout). grace/objectives/dropout.py says why attention dropout.
    dropout: float = 0.0


@dataclass
class DataConfig:
    train_file: str = "auto"  # auto: packaged:chatterbot (supervised) or packaged:wiki (unsupervised)
    text_field: str = "text"
    split: str = "train"
    on_error: str = "raise"  # raise | skip
    limit: Optional[int] = None
    shuffle: bool = True


@dataclass
class HeldOutConfig:
    """The held-out set checked every ``trainer.eval_every`` steps (grace/heldout.py)."""

    # split: `size` examples taken out of the training data (with every training example sharing a text with
    # them), so they are never trained on; or any data source (a file, packaged:chatterbot with split=eval, ...),
    # read as the mode's examples, of which `size` are drawn (seeded)
    source: str = "split"
    size: int = 16
    split: str = "train"  # the split of a given source
    batch_size: int = 16  # texts embedded together


@dataclass
class GuardConfig:
    action: str = "warn"  # off | warn (a warning, and guard/<name> = 1 in the metrics) | stop (also ends the run, resumable)
    patience: int = 1  # consecutive checks the condition must hold before the guard fires


@dataclass
class LengthGuardConfig(GuardConfig):
    """rollout/rationale_length_mean against its mean over the first `baseline_steps` steps."""

    max_ratio: float = 2.0  # fires above this multiple of the baseline (rationales doubling in length)
    min_ratio: float = 0.25  # ... or below this fraction (rationales shrinking to nothing)
    baseline_steps: int = 3


@dataclass
class RepetitionGuardConfig(GuardConfig):
    max_rate: float = 0.5  # rollout/repetition_rate: share of repeated token 3-grams in the step's rationales


@dataclass
class DiversityGuardConfig(GuardConfig):
    """rollout/embedding_mean_cos (mean cosine between different texts' embeddings): fires when the spread
    1 - cos falls below `min_spread_ratio` of its mean over the first `baseline_steps` steps."""

    min_spread_ratio: float = 0.5
    baseline_steps: int = 3


@dataclass
class HackingGuardConfig(GuardConfig):
    """The training score (GRACE: reward/total_mean) rising while the held-out score falls (needs eval_every)."""

    min_drop: float = 0.05  # held-out score this far below its best so far ...
    min_rise: float = 0.0  # ... while the training score's mean over `window` steps is this far above its value then
    window: int = 3


@dataclass
class GuardsConfig:
    length: LengthGuardConfig = field(default_factory=LengthGuardConfig)
    repetition: RepetitionGuardConfig = field(default_factory=RepetitionGuardConfig)
    diversity: DiversityGuardConfig = field(default_factory=DiversityGuardConfig)
    reward_vs_heldout: HackingGuardConfig = field(default_factory=HackingGuardConfig)


@dataclass
class TrainerConfig:
    max_steps: int = 100
    batch_size: int = 8  # training examples per step
    mini_batch_size: Optional[int] = None  # examples per optimizer update; None: one update per step
    micro_batch_size: int = 16  # rollout rows per forward/backward (gradient accumulation)
    lr: float = 1e-6
    weight_decay: float = 0.01
    schedule: str = "constant"  # constant | warmup_constant | cosine
    warmup_steps: int = 0  # optimizer updates
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights stay in model.dtype)
    # Under torchrun: auto (DDP when WORLD_SIZE > 1) | ddp | fsdp (FSDP2: parameters, gradients and optimizer
    # state sharded over the ranks). batch_size and mini_batch_size stay global (grace/parallel.py).
    strategy: str = "auto"
    output_dir: Optional[str] = None  # None: Hydra's job directory
    save_every: int = 50
    keep_last: int = 2
    resume: str = "none"  # none | auto | <checkpoint directory>
    # Settings a resume may change although they change the run's trajectory, e.g. [seed,data.train_file]
    # (grace/resume.py: any other change of such a setting stops the resume).
    resume_accept_changes: list[str] = field(default_factory=list)
    rationale_log_every: int = 10
    rationale_log_count: int = 4
    # Held-out evaluation every eval_every steps (and before the first), logged as eval/<name>; 0: none.
    eval_every: int = 0
    heldout: HeldOutConfig = field(default_factory=HeldOutConfig)
    keep_best: bool = False  # keep the checkpoint of the best held-out score (saved when it is reached; keep_last spares it)
    guards: GuardsConfig = field(default_factory=GuardsConfig)


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    project: str = "grace"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    name: Optional[str] = None  # None: from the Hydra overrides
    group: Optional[str] = None  # None: the sweep directory under multirun
    tags: list[str] = field(default_factory=list)
    progress_bar: bool = True


@dataclass
class FinalEvalConfig:
    enabled: bool = False  # evaluate the base model and the trained checkpoint after training
    tasks: list[str] = field(default_factory=lambda: ["GraceLeeSTS"])  # offline task / suite / mteb names
    max_new_tokens: int = 32
    batch_size: int = 16


@dataclass
class SweepConfig:
    """The one number ``grace-train`` returns to a Hydra sweeper (e.g. Optuna); see ``grace/sweep.py``."""

    # auto: final_eval/mean when final_eval.enabled, else reward/total_mean. final_eval/mean and
    # final_eval/<task> read the trained row of the final before/after evaluation; any other name is a
    # metrics.jsonl key (reward/total_mean, loss/policy, eval/<name> from periodic evaluation, ...).
    metric: str = "auto"
    direction: str = "maximize"  # maximize | minimize: what the sweeper does with the value
    reduce: str = "last"  # a metrics.jsonl key: last (mean of the last `last_steps` values) | best | mean
    last_steps: int = 5
    # Returned for a run whose loss, reward or gradient norm went NaN/inf (an Optuna sweep dies on a NaN).
    # None: -1e9 when maximizing, 1e9 when minimizing.
    diverged_value: Optional[float] = None


@dataclass
class ReportConfig:
    enabled: bool = True  # write <output_dir>/report/ (plots, tables, sample rationales) when the run ends
    sample_steps: list[int] = field(default_factory=list)  # rationale samples to show; []: first, middle, last


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mode: str = "supervised"
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    embedding: EmbeddingSection = field(default_factory=EmbeddingSection)
    # How rollouts are computed, never what they are (grace.engine): e.g. generation.compile=true on GPUs
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    final_eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    seed: int = 0


@dataclass
class SampleSection:
    """``grace-sft sample``: demonstrations by rejection sampling (grace/demonstrations.py)."""

    output: Optional[str] = None  # the demonstrations file to write (.jsonl); required
    num_examples: int = 64  # training examples rolled out, trainer.batch_size at a time; k = rollout.num_samples
    keep_truncated: bool = False  # a rationale cut without EOS would teach no ending: such texts are left out


@dataclass
class SampleConfig(TrainConfig):
    """The schema of ``grace-sft sample`` (conf/sample.yaml): the training settings it rolls out and rewards
    with, and what to keep."""

    sample: SampleSection = field(default_factory=SampleSection)


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="sample_schema", node=SampleConfig)


OBJECTIVES = ("grace", "contrastive", "simcse", "sft")  # grace/objectives/__init__.py builds each
STRATEGIES = ("auto", "ddp", "fsdp")  # grace/parallel.py


class ConfigError(ValueError):
    """An impossible combination of settings; the message says which keys to change."""


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}")


def role_samples(cfg: TrainConfig, role: str) -> int:
    own = getattr(cfg.rollout, role).num_samples
    return cfg.rollout.num_samples if own is None else own


def role_max_new_tokens(cfg: TrainConfig, role: str) -> int:
    own = getattr(cfg.rollout, role).max_new_tokens
    return cfg.rollout.max_new_tokens if own is None else own


def rollout_roles(cfg: TrainConfig) -> list[str]:
    """Roles that are sampled at all: unsupervised mode has no negatives."""
    return ["query", "positive"] + (["negative"] if cfg.mode == "supervised" else [])


def trained_roles(cfg: TrainConfig) -> list[str]:
    """Roles that receive policy gradient: positives only in the paper's recipe, every role in ours."""
    if cfg.reward.variant == "paper":
        return ["positive"]
    return rollout_roles(cfg)


def example_kind(cfg: TrainConfig) -> str:
    """What the training data is read as: demonstrations for objective=sft, else the mode's examples."""
    return DEMONSTRATIONS if cfg.objective.name == "sft" else cfg.mode


def token_budgets(cfg: TrainConfig, prompt_budget: int) -> int | dict[str, int]:
    """Per-field token budgets of the training data: every text must fit the prompt (``prompt_budget``: its
    tokens that are not template); a demonstration's rationale plus EOS must fit the rationale length."""
    if example_kind(cfg) != DEMONSTRATIONS:
        return prompt_budget
    return {"text": prompt_budget, "rationale": role_max_new_tokens(cfg, "positive") - 1}


def resolve_train_file(cfg: TrainConfig) -> str:
    if cfg.data.train_file != "auto":
        return cfg.data.train_file
    return "packaged:chatterbot" if cfg.mode == "supervised" else "packaged:wiki"


def reward_components(cfg: TrainConfig) -> dict[str, ComponentConfig]:
    """``reward.components``, each entry checked against ``ComponentConfig`` (a misspelt key, a weight that is
    not a number): ``ConfigError`` naming the entry."""
    checked = {}
    for name, entry in cfg.reward.components.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"reward.components.{name}={entry!r}: each component is a mapping of {list(ComponentConfig.__dataclass_fields__)}")
        try:
            checked[str(name)] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ComponentConfig), entry))
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"reward.components.{name}: {reason} (keys: {list(ComponentConfig.__dataclass_fields__)})") from None
    return checked


def validate(cfg: TrainConfig) -> None:
    """Reject impossible settings before anything expensive happens."""
    _one_of("mode", cfg.mode, MODES)
    _one_of("objective.name", cfg.objective.name, OBJECTIVES)
    _one_of("reward.variant", cfg.reward.variant, VARIANTS)
    _one_of("algorithm.estimator", cfg.algorithm.estimator, ESTIMATORS)
    _one_of("algorithm.aggregation", cfg.algorithm.aggregation, AGGREGATIONS)
    _one_of("algorithm.kl_estimator", cfg.algorithm.kl_estimator, KL_ESTIMATORS)
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
        _check_sft(cfg)
    else:
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
    for key in ("embedding_loss_coef", "kl_coef", "entropy_coef", "ppo_epochs", "recompute_old_logprobs"):
        value = getattr(cfg.algorithm, key)
        if value != getattr(defaults, key):
            raise ConfigError(
                f"algorithm.{key}={value} belongs to objective=grace's policy update, which objective={cfg.objective.name} does not run: remove it"
            )


def _check_trainer(cfg: TrainConfig) -> None:
    t = cfg.trainer
    for name in ("max_steps", "batch_size", "micro_batch_size", "save_every", "keep_last"):
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
    if cfg.objective.name == "grace" and lora.dropout > 0:
        raise ConfigError(
            f"model.lora.dropout={lora.dropout} with objective=grace would make the update's log-probs differ from the "
            "rollout's (sampled without dropout), so PPO ratios would not start at 1: set model.lora.dropout=0"
        )


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
