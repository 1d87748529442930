"""The typed configuration of an evaluation: what to evaluate (models, tasks) and how to embed.

Plain dataclasses, used twice: by the Python API (``evaluate_encoders``) and as the structured schema of
the ``grace-eval`` Hydra app (``grace.cli.eval`` registers them in Hydra's ConfigStore). As a schema
they make a misspelt key an error at start-up, inside list entries too; ``__post_init__`` checks values
when the CLI turns the config into these objects (``OmegaConf.to_object``).

``typing.Optional`` / ``List`` rather than ``X | None`` / ``list[X]``: OmegaConf reads these annotations.
"""
from dataclasses import dataclass, field, fields
from typing import List, Optional

from grace.config import LoggerConfig
from grace.generation.options import GenerationOptions
from grace.model.pooling import check_pooling
from grace.model.sources import PACKAGED_SMOLLM2

KINDS = ("grace", "sentence-transformers")
OVERWRITE_STRATEGIES = ("only-missing", "always")


@dataclass
class ModelConfig:
    """One encoder, one row of the comparison table."""

    # "packaged:smollm2-135m", "tiny-random", a saved encoder, a training checkpoint or run directory (its
    # newest checkpoint), a hub id; for kind=sentence-transformers also "packaged:all-minilm-l6-v2".
    source: str = PACKAGED_SMOLLM2
    label: Optional[str] = None  # the row's name in the table; default: source, "+ rationale" when on
    kind: str = "grace"  # "grace" (a causal LM writing rationales) or "sentence-transformers" (reference)
    rationale: Optional[bool] = None  # None: the encoder's saved setting (on for a base model)
    # None: the encoder's saved pooling ("after_system": template + text + rationale, as in training);
    # "input" is the plain mean over the text, "last_token" the last state (grace.model.pooling).
    pooling: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.source!r}: unknown kind {self.kind!r}, use one of {list(KINDS)}")
        if self.kind != "grace" and (self.rationale or self.pooling):
            raise ValueError(f"model {self.source!r}: a {self.kind} model has no rationale or pooling setting")
        if self.pooling is not None:
            check_pooling(self.pooling)


@dataclass
class EvalSettings:
    """How every GRACE encoder of one evaluation embeds, and where results go.

    The decoding values override what a checkpoint saved (its training-time limits would take hours on a
    CPU), so every row of a table is embedded the same way. System prompt, pooling and prompt length
    come from the saved encoder unless ``max_prompt_tokens`` (here) or a row's ``pooling`` says otherwise.
    """

    max_new_tokens: int = 64  # rationale length limit
    max_prompt_tokens: Optional[int] = None  # prompt budget for every row; None: each encoder's saved one
    temperature: float = 0.0  # 0 = greedy: an embedding is a deterministic function of the text
    top_p: float = 1.0
    seed: int = 0  # seeds sampled rationales per text (temperature > 0)
    num_samples: int = 1  # > 1 (needs temperature > 0): average several sampled rationales
    batch_size: int = 16  # texts per generation batch
    # How rationales are computed, never what they are (grace.generation.engine): e.g. eval.generation.compile=true
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    dtype: str = "float32"
    device: str = "cpu"
    cache_embeddings: bool = True  # the on-disk embedding cache: a re-run or repeated text costs a lookup
    embedding_cache: Optional[str] = None  # its SQLite file; None: $GRACE_CACHE/embeddings.sqlite
    results_dir: Optional[str] = None  # mteb's result cache; None: <output_dir>/mteb
    overwrite: str = "only-missing"  # "always": recompute scores mteb already has for a (model, revision)
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.overwrite not in OVERWRITE_STRATEGIES:
            raise ValueError(f"unknown overwrite {self.overwrite!r}: use one of {list(OVERWRITE_STRATEGIES)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class EvalConfig(EvalSettings):
    """The ``eval`` node of ``grace-eval``: settings plus the tasks and the models to compare."""

    # Task names, in order: offline tasks (Grace*), suites ("offline", "small") or any mteb task
    # name (those download their data, so they need the network).
    tasks: List[str] = field(default_factory=lambda: ["small"])
    models: List[ModelConfig] = field(default_factory=lambda: [ModelConfig()])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks:
            raise ValueError("eval.tasks is empty: name at least one task or suite")
        if not self.models:
            raise ValueError("eval.models is empty: name at least one model")

    def settings(self) -> EvalSettings:
        return EvalSettings(**{f.name: getattr(self, f.name) for f in fields(EvalSettings)})


@dataclass
class EvaluateConfig:
    """The whole ``grace-eval`` config (``conf/evaluate.yaml`` fills it)."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "outputs/eval"  # evaluate.yaml sets it to Hydra's run directory
    # The same logger group as grace-train (conf/logger/): wandb (offline by default) or none.
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(backend="none"))
