"""Training objectives behind one interface (``base.Objective``): one file each.

* ``grace`` (the ``policy_gradient`` package): rationales, contrastive rewards, PPO update (``policy_gradient.step``);
* ``contrastive`` (``contrastive.py``): supervised InfoNCE on prompt embeddings, no rationale;
* ``simcse`` (``simcse.py``): unsupervised SimCSE with attention-dropout views, no rationale;
* ``sft`` (``sft.py``): supervised fine-tuning on rationale demonstrations (the warm start of ``grace-sft``).

``objective=<name>`` (``conf/objective/``) picks one; ``grace.config.OBJECTIVES`` lists the names that
validation accepts, and a test keeps it equal to ``REGISTRY``.
"""
from __future__ import annotations

from grace.objectives.base import Objective, StepResult, TrainContext
from grace.objectives.contrastive import ContrastiveFineTuning
from grace.objectives.policy_gradient.step import PolicyGradient
from grace.objectives.sft import SupervisedFineTuning
from grace.objectives.simcse import SimCSE

REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (PolicyGradient, ContrastiveFineTuning, SimCSE, SupervisedFineTuning)}

__all__ = ["Objective", "StepResult", "TrainContext", "REGISTRY", "build_objective"]


def build_objective(context: TrainContext) -> Objective:
    """The objective ``context.cfg.objective.name`` names, built from the trainer's shared setup."""
    return REGISTRY[context.cfg.objective.name](context)
