"""The typed training configuration: dataclasses registered with Hydra's ConfigStore, and the settings
derived from them (roles sampled and trained, token budgets, reward components).

Hydra merges ``conf/train.yaml`` and its groups into this schema, so a misspelt key is an error at
start-up ("Key 'max_stepz' is not in struct"). ``grace.training.validation.validate`` then checks the settings that
are legal one by one but impossible together, before any model or data is loaded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grace.data.readers import DEMONSTRATIONS
from grace.generation.options import GenerationOptions
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT


@dataclass
class LoraSection:
    """LoRA adapters through peft (grace/distributed/lora.py); r = 0 trains every weight."""

    r: int = 0  # rank of the adapters; 0: no LoRA
    alpha: float = 16.0  # the adapters' output is scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input, in training forwards only
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or [all-linear]: every linear layer but the LM head


@dataclass
class ModelConfig:
    source: str = "packaged:smollm2-135m"  # any form grace.model.sources accepts: packaged name, directory, .gguf, hub id
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
    # Who writes rationales: all (every role) | queries (documents, i.e. positives and negatives, are embedded as
    # plain text, as CRE-T1 / MRE-T1 do, so a corpus indexes at plain-encoder cost). Training, the held-out set and
    # the saved encoder (hence grace-eval, grace-encode, grace-index) all follow it.
    rationales: str = "all"


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
    # The GRACE terms' truncation rule: a rationale cut at max_new_tokens ranks below every finished one (the
    # paper: R = -1). false: scored by its embedding like any other, e.g. when the length budget is far below
    # what the model writes and the rule would mostly reward shorter rationales (grace/rewards/grace_terms.py).
    rank_truncated_last: bool = True
    # The reward is the sum of these components' contributions (name -> ComponentConfig's keys; built-ins:
    # grace, length, truncation, degenerate). Untyped here so that the command line can add one
    # (+reward.components.length={weight:0.01,params:{budget:64}}); `reward_components` checks each entry.
    components: Dict[str, Any] = field(default_factory=lambda: {"grace": asdict(ComponentConfig())})


@dataclass
class AlgorithmConfig:
    estimator: str = "grpo"  # grpo | rloo | reinforce
    scale_by_std: bool = False
    # sum: baseline the summed reward (today's GRPO) | per_component: GDPO, each reward component baselined and
    # divided by its own within-group std, then summed weighted by |weight| (grace/objectives/policy_gradient/advantages.py)
    normalize: str = "sum"
    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"  # token-mean | sequence-mean | constant (Dr. GRPO: / (max rationale tokens x rationales))
    kl_coef: float = 0.0  # > 0 loads a frozen reference copy of the policy
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    # Recompute old log-probs with a full forward instead of taking them from the rollout; only worth it in
    # low precision, where cached decoding and a full forward round differently.
    recompute_old_logprobs: bool = False
    # > 0: add coef * InfoNCE of each rollout's pooled embedding (with gradient, from the update's forward)
    # against its detached in-batch partners (grace/objectives/policy_gradient/embedding_loss.py). 0: the plain policy-gradient update.
    embedding_loss_coef: float = 0.0
    embedding_loss_temperature: float = 0.05
    # Truncated importance sampling against the rollout engine's log-probs (grace/objectives/policy_gradient/
    # rollout_correction.py): auto (per token when trainer.precision=bf16 or generation.compile=true, else off)
    # | off | token | sequence. The mismatch itself is logged every step (rollout/logprob_mismatch_*).
    rollout_correction: str = "auto"
    rollout_correction_cap: float = 2.0  # C: importance weights are min(pi_train / pi_rollout, C)


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
    """The held-out set checked every ``trainer.eval_every`` steps (grace/training/heldout.py)."""

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
    # state sharded over the ranks). batch_size and mini_batch_size stay global (grace/distributed/parallel.py).
    strategy: str = "auto"
    output_dir: Optional[str] = None  # None: Hydra's job directory
    save_every: int = 50
    keep_last: int = 2
    resume: str = "none"  # none | auto | <checkpoint directory>
    # Settings a resume may change although they change the run's trajectory, e.g. [seed,data.train_file]
    # (grace/training/resume.py: any other change of such a setting stops the resume).
    resume_accept_changes: list[str] = field(default_factory=list)
    rationale_log_every: int = 10
    rationale_log_count: int = 4
    # Held-out evaluation every eval_every steps (and before the first), logged as eval/<name>; 0: none.
    eval_every: int = 0
    heldout: HeldOutConfig = field(default_factory=HeldOutConfig)
    keep_best: bool = False  # keep the checkpoint of the best held-out score (saved when it is reached; keep_last spares it)
    guards: GuardsConfig = field(default_factory=GuardsConfig)
    # Optimizer updates in a row whose loss or gradient was not finite (each skipped, not applied) after which
    # the run stops with exit status 3, naming its last checkpoint (all of whose weights are finite).
    max_skipped_updates: int = 3


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
    """The one number ``grace-train`` returns to a Hydra sweeper (e.g. Optuna); see ``grace/runs/sweep_value.py``."""

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
    # How rollouts are computed, never what they are (grace.generation.engine): e.g. generation.compile=true on GPUs
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
    """``grace-sft sample``: demonstrations by rejection sampling (grace/training/demonstrations.py)."""

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


class ConfigError(ValueError):
    """An impossible combination of settings; the message says which keys to change."""


RATIONALE_ROLES = ("all", "queries")  # embedding.rationales
DOCUMENT_ROLES = ("positive", "negative")


def plain_documents(cfg: TrainConfig) -> bool:
    """embedding.rationales=queries: positives and negatives are embedded as plain text, without a rationale."""
    return cfg.embedding.rationales == "queries"


def role_samples(cfg: TrainConfig, role: str) -> int:
    if plain_documents(cfg) and role in DOCUMENT_ROLES:
        return 1  # a plain-text embedding is deterministic: k copies would be the same row
    own = getattr(cfg.rollout, role).num_samples
    return cfg.rollout.num_samples if own is None else own


def role_max_new_tokens(cfg: TrainConfig, role: str) -> int:
    if plain_documents(cfg) and role in DOCUMENT_ROLES:
        return 0  # no rationale: the rollout pools the prompt alone, as GraceEncoder does with rationale=false
    own = getattr(cfg.rollout, role).max_new_tokens
    return cfg.rollout.max_new_tokens if own is None else own


def rollout_roles(cfg: TrainConfig) -> list[str]:
    """Roles that are sampled at all: unsupervised mode has no negatives."""
    return ["query", "positive"] + (["negative"] if cfg.mode == "supervised" else [])


def trained_roles(cfg: TrainConfig) -> list[str]:
    """Roles that receive policy gradient: positives only in the paper's recipe, every role in ours."""
    if cfg.reward.variant == "paper":
        return ["positive"]
    if plain_documents(cfg):
        return ["query"]  # documents write nothing to train
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
