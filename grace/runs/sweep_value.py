"""The one number a training job hands to a Hydra sweeper, and the study file of a search.

``grace-train`` returns ``sweep_value(...)`` from its Hydra task function; Hydra's Optuna sweeper reads it
as the trial's objective (a plain grid sweep ignores it). ``sweep.metric`` names it:

* ``final_eval/mean``, ``final_eval/<task>``: the trained row of the final before/after evaluation (its
  mean over tasks, or one task's main score as mteb reports it, usually 0..1);
* any ``metrics.jsonl`` key (``reward/total_mean``, ``loss/policy``, periodic ``eval/<name>`` scores):
  reduced over the run by ``sweep.reduce``: ``last`` (mean of the last ``sweep.last_steps`` logged values,
  which smooths a noisy training curve), ``best`` (max or min by ``sweep.direction``) or ``mean``;
* ``auto``: ``final_eval/mean`` when the final evaluation runs, else the objective's own training score:
  ``reward/total_mean`` for GRACE, ``infonce/accuracy`` for the contrastive and SimCSE baselines,
  ``sft/token_accuracy`` for supervised fine-tuning (all larger-is-better, like the default ``sweep.direction``).

A diverged run (a NaN or inf loss, reward or gradient norm at any step) gets the worst finite value for
the direction instead: Optuna 2 records a NaN objective as a failed trial and the sweeper then ends the
whole search (its ``max_failure_rate`` is 0 by default); a finite worst value lets the search go on and
steer away from that region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from grace.config import ConfigError

FINAL_EVAL = "final_eval"
WORST = 1e9  # the default diverged value's magnitude: finite, and below any real score when maximizing
# Non-finite values here mean the weights or the update are broken, not just a noisy step.
DIVERGENCE_KEYS = ("loss/policy", "loss/kl", "loss/embedding", "loss/infonce", "loss/sft", "reward/total_mean", "optim/grad_norm")


class MetricNotFound(ConfigError):
    """``sweep.metric`` names a value this run did not produce; the message lists the ones it did."""


@dataclass(frozen=True)
class Divergence:
    step: int
    key: str
    value: float

    def __str__(self) -> str:
        return f"{self.key} = {self.value} at step {self.step}"


def resolve_metric(metric: str, final_eval_enabled: bool, objective: str = "grace") -> str:
    """The metric ``sweep.metric`` names; ``auto``: the final evaluation's mean, or without one the training
    score of ``objective`` (its ``Objective.training_score``)."""
    if metric != "auto":
        return metric
    if final_eval_enabled:
        return f"{FINAL_EVAL}/mean"
    from grace.objectives import REGISTRY  # imported here: the objectives load torch, a report needs them rarely

    return REGISTRY[objective].training_score


def find_divergence(rows: Sequence[dict[str, Any]], extra_keys: Sequence[str] = ()) -> Divergence | None:
    """The first step whose loss, reward, gradient norm (or ``extra_keys``) is NaN or infinite."""
    keys = (*DIVERGENCE_KEYS, *extra_keys)
    for row in rows:
        for key in keys:
            value = row.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return Divergence(int(row.get("step", 0)), key, float(value))
    return None


def worst_value(direction: str, diverged_value: float | None = None) -> float:
    if diverged_value is not None:
        return float(diverged_value)
    return -WORST if direction == "maximize" else WORST


def final_eval_score(metric: str, scores: dict[str, float]) -> float:
    """``final_eval/<name>`` from the trained row's ``{task: score, "mean": ...}``."""
    name = metric.removeprefix(f"{FINAL_EVAL}/")
    if name not in scores:
        raise MetricNotFound(f"sweep.metric={metric}: the final evaluation has {sorted(scores)}, not {name!r}")
    return float(scores[name])


def reduce_metric(metric: str, rows: Sequence[dict[str, Any]], *, reduce: str, last_steps: int, direction: str) -> float:
    """A ``metrics.jsonl`` key over the run: ``last`` (mean of the last ``last_steps`` values), ``best``, ``mean``.

    Rows without the key (a periodic evaluation that runs every N steps) are skipped.
    """
    values = [float(row[metric]) for row in rows if isinstance(row.get(metric), (int, float))]
    if not values:
        known = sorted({key for row in rows for key in row if key != "step"})
        raise MetricNotFound(f"sweep.metric={metric}: no step logged it; metrics.jsonl has {known}")
    if reduce == "last":
        tail = values[-last_steps:]
        return sum(tail) / len(tail)
    if reduce == "best":
        return max(values) if direction == "maximize" else min(values)
    return sum(values) / len(values)


def sweep_value(
    metric: str,
    rows: Sequence[dict[str, Any]],
    final_scores: dict[str, float] | None,
    *,
    direction: str,
    reduce: str = "last",
    last_steps: int = 5,
    diverged_value: float | None = None,
) -> float:
    """The value named by ``metric`` (already resolved from ``auto``); finite, always.

    ``rows``: the run's metrics.jsonl; ``final_scores``: the trained row of the final evaluation as
    ``{task: score, "mean": score}`` (None when it did not run). A diverged run, or a metric that came
    out NaN or infinite, gives ``worst_value(direction, diverged_value)``. A metric the run never
    produced raises ``MetricNotFound`` (a wrong setting must not pass for a bad trial).
    """
    if find_divergence(rows) is not None:
        return worst_value(direction, diverged_value)
    if metric.startswith(f"{FINAL_EVAL}/"):
        if final_scores is None:
            raise MetricNotFound(f"sweep.metric={metric}: the final evaluation did not run (final_eval.enabled=false)")
        value = final_eval_score(metric, final_scores)
    else:
        value = reduce_metric(metric, rows, reduce=reduce, last_steps=last_steps, direction=direction)
    return value if math.isfinite(value) else worst_value(direction, diverged_value)


def sqlite_storage(path: str) -> str:
    """OmegaConf resolver ``${sqlite_storage:PATH}``: the SQLAlchemy URL of a SQLite file for an Optuna study.

    Creates the file's folder first: the sweeper opens the study before any job directory exists, and
    SQLite does not create folders. The path is made absolute, so it names the same file from every job.
    """
    file = Path(path).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sqlite_storage"):
        OmegaConf.register_new_resolver("sqlite_storage", sqlite_storage)
