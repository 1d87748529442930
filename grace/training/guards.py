"""Guards against reward hacking: detectors over a run's metrics, and what the trainer does when one fires.

A policy trained on a reward finds the cheapest way to raise it, which need not be better embeddings:
rationales that grow without end, loop, or make every text embed alike (a reward that pays for similarity
can be gamed so), or, with aggressive penalties, a degenerate behaviour that the reward still prefers
(arXiv 2511.16073). Each detector is a pure function of the metric history (the rows of
``metrics.jsonl``) and looks at the newest row:

* ``length``: ``rollout/rationale_length_mean`` above ``max_ratio`` or below ``min_ratio`` times its mean
  over the first ``baseline_steps`` steps;
* ``repetition``: ``rollout/repetition_rate`` (share of repeated token 3-grams) above ``max_rate``;
* ``diversity``: the spread 1 - ``rollout/embedding_mean_cos`` (mean cosine between the embeddings of
  different texts) below ``min_spread_ratio`` times its mean over the first ``baseline_steps`` steps;
* ``reward_vs_heldout``: the held-out primary score (``eval/*``, grace/training/heldout.py) at least ``min_drop``
  below its best so far while the training score (GRACE: ``reward/total_mean``), averaged over the
  ``window`` steps up to now, exceeds its average up to the best evaluation by more than ``min_rise``.

A detector fires when its condition holds at ``patience`` consecutive checks. Then, by its ``action``:
``warn`` prints a warning and logs ``guard/<name> = 1`` (0 at the other checks); ``stop`` also saves a
checkpoint and ends the run, which ``trainer.resume=auto`` continues (guard settings may change on
resume: they decide when a run ends, not what a step computes). ``off`` skips it.

Because the detectors read only the history, a resumed run (whose ``metrics.jsonl`` is cut back to its
checkpoint) judges exactly as the uninterrupted run would. ``trainer.keep_best`` follows the same history:
the checkpoint of the best held-out score so far is saved when it is reached and spared by ``keep_last``.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

GUARDS = ("length", "repetition", "diversity", "reward_vs_heldout")
BEST_FILE = "best_checkpoint.json"
Rows = Sequence[dict[str, Any]]


class GuardWarning(UserWarning):
    """A guard found signs of reward hacking."""


@dataclass(frozen=True)
class Finding:
    guard: str
    step: int
    action: str  # warn | stop
    message: str

    def __str__(self) -> str:
        return f"guard {self.guard} at step {self.step}: {self.message}"


def _values(rows: Rows, key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in rows if _is_number(row.get(key))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def length_drift(rows: Rows, *, max_ratio: float, min_ratio: float, baseline_steps: int) -> str | None:
    values = [v for _, v in _values(rows, "rollout/rationale_length_mean")]
    if len(values) <= baseline_steps:
        return None
    baseline, now = sum(values[:baseline_steps]) / baseline_steps, values[-1]
    if baseline <= 0:
        return None
    ratio = now / baseline
    if ratio > max_ratio:
        return f"mean rationale length {now:.1f} tokens is {ratio:.2f}x its first steps' {baseline:.1f} (max_ratio={max_ratio})"
    if ratio < min_ratio:
        return f"mean rationale length {now:.1f} tokens shrank to {ratio:.2f}x its first steps' {baseline:.1f} (min_ratio={min_ratio})"
    return None


def repetition(rows: Rows, *, max_rate: float) -> str | None:
    values = _values(rows, "rollout/repetition_rate")
    if values and values[-1][1] > max_rate:
        return f"{values[-1][1]:.0%} of the rationales' token 3-grams repeat an earlier one (max_rate={max_rate})"
    return None


def diversity_collapse(rows: Rows, *, min_spread_ratio: float, baseline_steps: int) -> str | None:
    values = [v for _, v in _values(rows, "rollout/embedding_mean_cos")]
    if len(values) <= baseline_steps:
        return None
    baseline = 1.0 - sum(values[:baseline_steps]) / baseline_steps
    spread = 1.0 - values[-1]
    if baseline > 0 and spread < min_spread_ratio * baseline:
        return (
            f"embeddings of different texts drew together: mean cosine {values[-1]:.4f}, spread 1 - cos {spread:.4f} is "
            f"{spread / baseline:.2f}x its first steps' {baseline:.4f} (min_spread_ratio={min_spread_ratio})"
        )
    return None


def best_evaluation(rows: Rows, score_key: str, *, first_step: int = 0) -> tuple[int, float] | None:
    """(step, score) of the best held-out score at or after ``first_step`` (the earliest of equal ones)."""
    evaluations = [(s, v) for s, v in _values(rows, score_key) if s >= first_step]
    return max(evaluations, key=lambda pair: (pair[1], -pair[0])) if evaluations else None


def reward_vs_heldout(rows: Rows, *, score_key: str, training_key: str, min_drop: float, min_rise: float, window: int) -> str | None:
    evaluations = _values(rows, score_key)
    training = _values(rows, training_key)
    if len(evaluations) < 2 or not training:
        return None
    best_step, best = best_evaluation(rows, score_key)
    now_step, now = evaluations[-1]
    if now > best - min_drop:
        return None

    def mean_up_to(step: int) -> float:  # the `window` training values up to `step` (the first ones before any)
        upto = [v for s, v in training if s <= step] or [v for _, v in training[:window]]
        tail = upto[-window:]
        return sum(tail) / len(tail)

    rise = mean_up_to(now_step) - mean_up_to(best_step)
    if rise <= min_rise:
        return None
    return (
        f"held-out {score_key} fell from {best:.4f} (step {best_step}) to {now:.4f} while {training_key} rose by "
        f"{rise:.4g} (mean over {window} steps): the policy may be gaming the reward"
    )


def check(rows: Rows, guards: Any, *, score_key: str | None, training_key: str) -> tuple[list[Finding], dict[str, float]]:
    """The guards (``TrainerConfig.guards``) on the history ``rows`` whose last row is the step just done:
    (findings, ``guard/<name>`` 0/1 of every guard checked at this step)."""
    detectors: dict[str, tuple[str | None, Callable[[Rows], str | None]]] = {
        "length": ("rollout/rationale_length_mean", lambda r: length_drift(
            r, max_ratio=guards.length.max_ratio, min_ratio=guards.length.min_ratio, baseline_steps=guards.length.baseline_steps)),
        "repetition": ("rollout/repetition_rate", lambda r: repetition(r, max_rate=guards.repetition.max_rate)),
        "diversity": ("rollout/embedding_mean_cos", lambda r: diversity_collapse(
            r, min_spread_ratio=guards.diversity.min_spread_ratio, baseline_steps=guards.diversity.baseline_steps)),
        "reward_vs_heldout": (score_key, lambda r: reward_vs_heldout(
            r, score_key=score_key, training_key=training_key, min_drop=guards.reward_vs_heldout.min_drop,
            min_rise=guards.reward_vs_heldout.min_rise, window=guards.reward_vs_heldout.window)),
    }  # fmt: skip
    findings, flags = [], {}
    step = int(rows[-1]["step"])
    for name, (key, detector) in detectors.items():
        settings = getattr(guards, name)
        if settings.action == "off" or key is None or not _is_number(rows[-1].get(key)):
            continue  # not watched, or nothing to judge at this step
        checked = [i for i, row in enumerate(rows) if _is_number(row.get(key))]
        messages = [detector(rows[: i + 1]) for i in checked[-settings.patience :]] if len(checked) >= settings.patience else [None]
        fired = all(messages)
        flags[f"guard/{name}"] = float(fired)
        if fired:
            findings.append(Finding(name, step, settings.action, messages[-1]))
    return findings, flags


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    best: bool = False  # this step reached the best held-out score so far, and trainer.keep_best keeps it

    @property
    def stop(self) -> Finding | None:
        return next((f for f in self.findings if f.action == "stop"), None)


class Watch:
    """The trainer's side: periodic held-out scores, the guards, the best checkpoint.

    ``history``: the run's metrics so far (on resume, ``metrics.jsonl`` cut back to the checkpoint);
    ``evaluate()``: the held-out ``eval/*`` scores of the current weights, or None without a held-out set;
    ``score_key``: the held-out primary score; ``training_key``: the objective's training score.
    """

    def __init__(
        self,
        trainer: Any,
        history: list[dict[str, Any]],
        evaluate: Callable[[], dict[str, float]] | None,
        *,
        score_key: str | None,
        training_key: str,
    ) -> None:
        self.trainer, self.history, self.evaluate_now = trainer, history, evaluate
        self.score_key, self.training_key = score_key, training_key

    def evaluate(self, step: int) -> dict[str, float]:
        """``eval/*`` at step 0 (before training) and every ``eval_every`` steps; {} otherwise."""
        if self.evaluate_now is None or step % self.trainer.eval_every:
            return {}
        started = time.perf_counter()
        scores = self.evaluate_now()
        return {**scores, "time/eval_seconds": time.perf_counter() - started}

    def check(self, metrics: dict[str, Any]) -> Verdict:
        """Judge the step whose ``metrics`` are about to be logged: adds its ``guard/*`` flags to them, warns."""
        self.history.append(metrics)
        findings, flags = check(self.history, self.trainer.guards, score_key=self.score_key, training_key=self.training_key)
        metrics.update(flags)
        for finding in findings:
            warnings.warn(str(finding) + (": stopping the run" if finding.action == "stop" else ""), GuardWarning, stacklevel=2)
        best = self.best()
        return Verdict(findings, best is not None and best[0] == metrics["step"] and self.trainer.keep_best)

    def best(self) -> tuple[int, float] | None:
        """(step, score) of the best held-out score of a trained step (step 0 has no checkpoint)."""
        return None if self.score_key is None else best_evaluation(self.history, self.score_key, first_step=1)

    def protected(self, checkpoints: Path) -> list[Path]:
        """Checkpoints ``keep_last`` must spare: the best held-out one, with ``trainer.keep_best``."""
        best = self.best() if self.trainer.keep_best else None
        return [] if best is None else [checkpoints / f"step-{best[0]}"]

    def record_best(self, output_dir: Path, checkpoint: Path) -> None:
        """Point ``<output_dir>/best_checkpoint.json`` at ``checkpoint`` when it holds the best score."""
        best = self.best()
        if self.trainer.keep_best and best is not None and checkpoint.name == f"step-{best[0]}":
            record = {"step": best[0], "metric": self.score_key, "value": best[1], "checkpoint": str(checkpoint)}
            (output_dir / BEST_FILE).write_text(json.dumps(record, indent=2) + "\n")
