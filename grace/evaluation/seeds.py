"""Several runs of one method (its seeds) as one row of a comparison: mean ± spread per task.

    summaries = summarise(table, {"GRACE seed 0": "GRACE", "GRACE seed 1": "GRACE", ...})
    print(to_markdown(table, summaries))

Rows of ``table`` named in ``methods`` are grouped by method; every other row (a base model, a reference
encoder: deterministic, one run) stays a row of its own. The spread is the sample standard deviation
over runs (n - 1 in the denominator; 0 for a single run), of each task's main score and of each run's
mean over tasks, so the suite mean's spread is that of whole runs, not of tasks.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from grace.evaluation.report import ComparisonTable


@dataclass
class MethodSummary:
    method: str  # the row's name
    runs: list[str]  # labels of the table rows it summarises, one per seed
    rationale: bool  # its runs embed with a rationale
    mean: dict[str, float]  # task name (and "mean": the suite mean) -> mean main score over runs
    spread: dict[str, float]  # task name (and "mean") -> sample std over runs (0 with one run)


def summarise(table: ComparisonTable, methods: dict[str, str]) -> list[MethodSummary]:
    """One summary per method (in order of first appearance), then one per ungrouped row.

    Raises ValueError if a label in ``methods`` is not a row of ``table``, or a run lacks a task.
    """
    by_label = {row.label: row for row in table.rows}
    missing = sorted(set(methods) - set(by_label))
    if missing:
        raise ValueError(f"no evaluated row for {missing}")
    groups: dict[str, list[str]] = {}
    for row in table.rows:
        groups.setdefault(methods.get(row.label, row.label), []).append(row.label)
    summaries = []
    for method, labels in groups.items():
        rows = [by_label[label] for label in labels]
        columns: dict[str, list[float]] = {}
        for row in rows:
            for task in table.tasks:
                if task not in row.scores:
                    raise ValueError(f"{row.label} has no score for {task}")
                columns.setdefault(task, []).append(row.scores[task])
            columns.setdefault("mean", []).append(row.mean(table.tasks))
        summaries.append(
            MethodSummary(
                method=method,
                runs=labels,
                rationale=any(row.rationale for row in rows),
                mean={name: statistics.fmean(values) for name, values in columns.items()},
                spread={name: statistics.stdev(values) if len(values) > 1 else 0.0 for name, values in columns.items()},
            )
        )
    return summaries


def to_markdown(table: ComparisonTable, summaries: list[MethodSummary]) -> str:
    """A markdown table: main score x100 as ``mean ± std`` per task and for the suite mean, runs per row."""
    header = ["method", "runs", "rationale", *[task.removeprefix("Grace") for task in table.tasks], "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for summary in summaries:
        cells = [summary.method, str(len(summary.runs)), "yes" if summary.rationale else "no"]
        cells += [_cell(summary, name, len(summary.runs)) for name in [*table.tasks, "mean"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Main score x100; with several runs (seeds), mean ± sample standard deviation over runs.")
    return "\n".join(lines) + "\n"


def _cell(summary: MethodSummary, name: str, runs: int) -> str:
    mean = summary.mean[name]
    if not math.isfinite(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * summary.spread[name]:.2f}" if runs > 1 else f"{100 * mean:.2f}"
