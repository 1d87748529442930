"""The end of a training job: final evaluation into the run's dashboard, the sweep value, the report.

``grace-train`` passes ``Finisher.after_training`` to the trainer, which calls it after the last step and
before the wandb run closes, so the before/after table lands in the same run (summary keys
``final_eval/...`` and a table) and a failure there is the run's exit status. ``Finisher.report`` then
writes ``<output_dir>/report/`` and ``Finisher.summary`` the console's last screen.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from grace.config import TrainConfig
from grace.runs.console import RunSummary
from grace.runs.sweep_value import Divergence, MetricNotFound, find_divergence, resolve_metric, sweep_value, worst_value
from grace.training.guards import BEST_FILE
from grace.training.run_logger import METRICS_FILE, RunLogger, read_metrics

if TYPE_CHECKING:
    from grace.evaluation.report import ComparisonTable
    from grace.training.trainer import TrainResult

SUMMARY_METRICS = (
    "reward/total_mean", "rollout/rationale_length_mean", "rollout/truncation_rate", "loss/sft", "sft/token_accuracy",
    "eval/triplet_accuracy", "eval/halves_accuracy", "eval/token_accuracy",
)  # fmt: skip


@dataclass
class Finisher:
    cfg: TrainConfig
    sweeping: bool  # under a Hydra sweep the value is required: a metric the run lacks fails the job
    program: str = "grace-train"  # the command, for the summary's title
    started: float = field(default_factory=time.perf_counter)
    result: TrainResult | None = None
    table: ComparisonTable | None = None
    divergence: Divergence | None = None
    metric: str = ""
    value: float | None = None
    wandb: str | None = None
    notes: list[str] = field(default_factory=list)

    def after_training(self, result: TrainResult, logger: RunLogger) -> None:
        self.result, self.wandb = result, logger.location
        if result.stopped_by is not None:
            self.notes.append(f"stopped early by {result.stopped_by}; trainer.resume=auto continues (set its action to warn to go past it)")
        if (best := result.output_dir / BEST_FILE).is_file():
            self.notes.append(f"best held-out checkpoint: {json.loads(best.read_text())}")
        rows = read_metrics(result.output_dir / METRICS_FILE)
        self.divergence = find_divergence(rows)
        if self.cfg.final_eval.enabled and self.divergence is None:
            self.table = before_after(self.cfg, result.last_checkpoint, result.output_dir / "eval")
            logger.log_evaluation("final_eval", self.table, step=result.steps_done)
        elif self.divergence is not None:
            self.notes.append(f"diverged: {self.divergence}; the final evaluation was skipped")
        self.metric = resolve_metric(self.cfg.sweep.metric, self.cfg.final_eval.enabled, self.cfg.objective.name)
        sweep = self.cfg.sweep
        try:
            scores = self.table.primary_scores() if self.table is not None else None
            self.value = sweep_value(
                self.metric, rows, scores, direction=sweep.direction, reduce=sweep.reduce,
                last_steps=sweep.last_steps, diverged_value=sweep.diverged_value,
            )  # fmt: skip
        except MetricNotFound as error:
            if self.sweeping:
                raise
            self.notes.append(f"no sweep value: {error}")
            return
        logger.update_summary({"sweep/value": self.value, "sweep/metric": self.metric})

    def diverged_value(self, output_dir: Path) -> float | None:
        """For a run that raised: the worst value when its metrics show it diverged first, else None."""
        self.divergence = find_divergence(read_metrics(output_dir / METRICS_FILE))
        if self.divergence is None:
            return None
        self.metric = resolve_metric(self.cfg.sweep.metric, self.cfg.final_eval.enabled, self.cfg.objective.name)
        self.value = worst_value(self.cfg.sweep.direction, self.cfg.sweep.diverged_value)
        return self.value

    def report(self, output_dir: Path) -> Path | None:
        """``<output_dir>/report/report.md`` (unless ``report.enabled=false``); a failure is a note, not the
        run's failure: the training it describes has finished and is saved."""
        if not self.cfg.report.enabled:
            return None
        from grace.runs.report import write_report

        try:
            return write_report([output_dir], output_dir / "report", sample_steps=list(self.cfg.report.sample_steps))
        except Exception as error:  # noqa: BLE001 - reported, and the run's outputs stand
            self.notes.append(f"the report could not be written: {type(error).__name__}: {error}")
            return None

    def summary(self, report: Path | None) -> str:
        assert self.result is not None
        rows = read_metrics(self.result.output_dir / METRICS_FILE)
        firsts_lasts = {}
        for key in SUMMARY_METRICS:
            values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
            if values:
                firsts_lasts[key] = (values[0], values[-1])
        return RunSummary(
            output_dir=self.result.output_dir,
            steps=self.result.steps_done,
            seconds=time.perf_counter() - self.started,
            last_checkpoint=self.result.last_checkpoint,
            report=report,
            wandb=self.wandb,
            metrics=firsts_lasts,
            evaluation=self.table.to_markdown() if self.table is not None else None,
            evaluation_dir=self.result.output_dir / "eval",
            sweep=None if self.value is None else f"{self.metric} = {self.value:.6g} ({self.cfg.sweep.direction})",
            notes=self.notes,
            program=self.program,
        ).render()


def before_after(cfg: TrainConfig, checkpoint: Path, output_dir: Path) -> ComparisonTable:
    """The base model without and with a rationale, then the trained checkpoint, on a quick task subset."""
    from grace.evaluation.runner import QUICK_SETTINGS
    from grace.evaluation.runner import before_after as evaluate_before_after
    from grace.training.trainer import resolve_device

    settings = replace(
        QUICK_SETTINGS,
        max_new_tokens=cfg.final_eval.max_new_tokens,
        batch_size=cfg.final_eval.batch_size,
        device=str(resolve_device(cfg.model.device)),  # where the run trained, GPU included
        dtype=cfg.model.dtype,
        generation=cfg.generation,
    )
    return evaluate_before_after(checkpoint, output_dir, base=cfg.model.source, tasks=list(cfg.final_eval.tasks), settings=settings)


def check_final_eval_tasks(cfg: TrainConfig) -> None:
    """At start-up: the final evaluation's task names exist and their data can be loaded here, and a
    ``sweep.metric=final_eval/<task>`` names one of them (an hour of training must not end in a typo)."""
    if not cfg.final_eval.enabled:
        return
    from grace.config import ConfigError
    from grace.evaluation.benchmarks import DataUnavailable, check_data_available
    from grace.evaluation.tasks import OFFLINE_SUITE, get_tasks

    try:
        tasks = get_tasks(list(cfg.final_eval.tasks))
        check_data_available(tasks, OFFLINE_SUITE)
    except (ValueError, DataUnavailable) as error:
        raise ConfigError(f"final_eval.tasks={list(cfg.final_eval.tasks)}: {error}") from None
    metric = resolve_metric(cfg.sweep.metric, True)
    names = {task.metadata.name for task in tasks} | {"mean"}
    if metric.startswith("final_eval/") and metric.removeprefix("final_eval/") not in names:
        raise ConfigError(f"sweep.metric={metric}: the final evaluation runs {sorted(names)}")
