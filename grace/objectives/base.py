"""The interface between the trainer and what a training step optimises.

The trainer owns everything objectives share: settings, data stream, model loading, optimizer and
schedule, checkpoints with exact resume, logging and the final evaluation. An objective owns one step::

    objective = build_objective(TrainContext(cfg, model, tokenizer, template, device, autocast, reference, parallel))
    result = objective.step(step, examples, optimizer, scheduler)   # -> StepResult
    save_checkpoint(..., objective.embedding, ...)                   # how the trained weights embed

``step`` runs the step's forward and backward passes and its optimizer updates (each through
``grace.objectives.optimizer.apply_update``, which also advances the schedule) and returns what to log. ``examples`` is
the global batch: under torchrun every rank gets all of it, works on its share
(``grace.distributed.ranks.local_examples``) and returns metrics of the global batch. Training forwards go
through ``context.parallel.module`` (``grace.distributed.parallel``), rollouts through ``context.model``. Randomness
must come from the seeded global generators or from (seed, step): the trainer restores both on resume,
so 2 steps + resume + 2 steps == 4 steps for every objective (tested per objective).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.config import TrainConfig
from grace.data import Sentence, Triplet
from grace.distributed.parallel import Parallel
from grace.embedding.pipeline import EmbeddingConfig
from grace.model.prompts import PromptTemplate


@dataclass
class TrainContext:
    """The trainer's shared setup, from which every objective is built."""

    cfg: TrainConfig
    model: PreTrainedModel  # the trained weights, in eval mode between steps
    tokenizer: PreTrainedTokenizerBase
    template: PromptTemplate  # the chat template around the system prompt, tokenised once
    device: torch.device
    autocast: AbstractContextManager  # bf16 autocast (trainer.precision=bf16) or a no-op; reusable
    # Frozen starting policy, only when algorithm.kl_coef > 0: a model, its FSDP-sharded forward, or with LoRA
    # the policy with its adapter switched off (grace.distributed.lora.WithoutAdapter); policy_logprobs calls any of them.
    reference: torch.nn.Module | None = None
    parallel: Parallel | None = None  # how training forwards reach `model` (DDP, FSDP); None: one process

    def __post_init__(self) -> None:
        if self.parallel is None:
            self.parallel = Parallel(self.model)


@dataclass
class StepResult:
    """What one step reports; the trainer adds ``step``, ``optim/lr`` and ``time/step_seconds``."""

    metrics: dict[str, float]  # "group/name" -> value, one line of metrics.jsonl
    updates: int  # optimizer updates taken (each advanced the schedule once)
    rationales: list[dict[str, Any]] = field(default_factory=list)  # sample rollouts for rationales.jsonl, if any
    skipped_updates: int = 0  # updates not applied because their loss or gradient was not finite (apply_update)


class Objective(ABC):
    """One training objective; subclasses live one per file in ``grace/objectives/``."""

    name: ClassVar[str]  # the objective.name that selects it
    progress_metric: ClassVar[tuple[str, str]]  # (label, metric key) shown on the progress bar
    # The larger-is-better metrics.jsonl key that says how training goes: the sweep value when there is no
    # final evaluation (sweep.metric=auto), and what the reward_vs_heldout guard compares with held-out scores.
    training_score: ClassVar[str]
    reads_logits: ClassVar[bool] = True  # False: only pooled hidden states train (the LM head gets no gradient)

    def __init__(self, context: TrainContext) -> None:
        self.context = context

    @property
    @abstractmethod
    def embedding(self) -> EmbeddingConfig:
        """How the trained weights embed a text; saved beside every checkpoint (``grace_encoder.json``)."""

    @property
    def query_embedding(self) -> EmbeddingConfig | None:
        """How the trained weights embed a query when that differs from ``embedding`` (e.g. embedding.rationales=
        queries: documents as plain text, queries with a rationale); None: as ``embedding``."""
        return None

    @abstractmethod
    def updates_per_step(self) -> int:
        """Optimizer updates in every step (the learning-rate schedule counts updates)."""

    @abstractmethod
    def step(self, step: int, examples: Sequence[Triplet | Sentence], optimizer: torch.optim.Optimizer, scheduler) -> StepResult:
        """Train on one batch of examples (``trainer.batch_size`` of them); ``step`` counts from 1."""

    def state_dict(self) -> dict[str, Any]:
        """Objective state beyond weights, optimizer and RNG that a resumed run needs (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"objective {self.name} keeps no state, but the checkpoint holds {sorted(state)}")
