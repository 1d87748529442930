"""Rewards: one scalar per rollout, a weighted sum of named components (``compose``).

    reward_function = RewardFunction.from_config(cfg.reward, cfg.mode)
    breakdown = reward_function(RewardInputs(embeddings, group, role, truncated, rationale_ids, ...))
    breakdown.total   # [R] = sum over components of clip(weight(step) * value, -cap, cap)

One file per component: ``grace_terms`` (the GRACE terms of both variants, ``compute_rewards``, each
variant with its own truncation rule), ``length`` (tokens beyond a budget), ``truncation`` (cut without
EOS), ``degenerate`` (repeated n-grams, near-empty text, a copy of the input); any other function by its
dotted path. ``types`` holds the containers, ``statistics`` the within-group spread the logs show.
"""
from grace.rewards.compose import BUILTINS, Component, ComponentError, NonFiniteReward, Ramp, RewardFunction, build_component
from grace.rewards.grace_terms import MODES, PAPER_TRUNCATION_REWARD, VARIANTS, compute_rewards, trained_rows
from grace.rewards.statistics import within_group_std
from grace.rewards.types import ComponentValue, RewardBreakdown, RewardInputs

__all__ = [
    "BUILTINS", "MODES", "PAPER_TRUNCATION_REWARD", "VARIANTS", "Component", "ComponentError", "ComponentValue",
    "NonFiniteReward", "Ramp", "RewardBreakdown", "RewardFunction", "RewardInputs", "build_component", "compute_rewards",
    "trained_rows", "within_group_std",
]  # fmt: skip
