"""One readable report of one or several training runs (``grace-report``, ``grace/cli/report.py``).

    grace-report outputs/2025-01-31/14-02-11                 # one run  -> <run>/report/report.md
    grace-report multirun/2025-01-31/14-02-11                # a sweep: every job inside, curves overlaid
    grace-report outputs/a outputs/b -o compare --steps 1 50 # chosen runs, rationales at steps 1 and 50

Writes PNG plots of every training metric (grace/runs/plots.py), the runs table (for several runs: the
settings that differ between them, the last reward, the final evaluation's mean and the sweep value),
each run's evaluation table (``eval/results.md``), sample rationales at chosen steps (from
``rationales.jsonl``), and ``report.md`` linking it all. ``grace-train`` writes it for every run
(``report.enabled``) and, after a sweep, for the whole sweep (``SweepReport``, a Hydra callback).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.experimental.callback import Callback

from grace.runs.plots import Series, draw_all
from grace.training.run_logger import METRICS_FILE, RATIONALES_FILE

REPORT_FILE = "report.md"
EVAL_DIR = "eval"
# Settings shown for a single run (several runs show the ones that differ instead).
KEY_SETTINGS = (
    "model.source", "mode", "reward.variant", "reward.tau", "reward.w_cluster", "reward.w_cross", "algorithm.estimator",
    "trainer.lr", "trainer.batch_size", "trainer.max_steps", "rollout.num_samples", "rollout.max_new_tokens", "seed",
)  # fmt: skip
MAX_TEXT = 300  # characters of an input text shown beside its rationale


@dataclass
class Run:
    """What a training run left in its directory."""

    path: Path
    label: str
    metrics: list[dict[str, Any]]
    rationales: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml, flattened: "reward.tau" -> 0.1
    evaluation: str | None = None  # eval/results.md
    final_mean: float | None = None  # mean of the trained row of eval/results.json

    def last(self, key: str) -> float | None:
        values = [row[key] for row in self.metrics if isinstance(row.get(key), (int, float))]
        return values[-1] if values else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line raises ``ValueError`` naming file and line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error.msg})") from None
    return rows


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def load_run(path: Path, label: str | None = None) -> Run:
    if not (path / METRICS_FILE).is_file():
        raise ValueError(f"{path}: no {METRICS_FILE}, so not a grace-train output directory (or it has not logged a step yet)")
    config_file = path / "config.yaml"
    config = flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    results_md, results_json = path / EVAL_DIR / "results.md", path / EVAL_DIR / "results.json"
    final_mean = None
    if results_json.is_file():
        rows = json.loads(results_json.read_text()).get("rows", [])
        final_mean = rows[-1].get("mean") if rows else None
    return Run(
        path=path,
        label=label or path.name,
        metrics=read_jsonl(path / METRICS_FILE),
        rationales=read_jsonl(path / RATIONALES_FILE),
        config=config,
        evaluation=results_md.read_text() if results_md.is_file() else None,
        final_mean=final_mean,
    )


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run, and every run inside a path that is not (a sweep or study folder)."""
    found: list[Path] = []
    for path in paths:
        if (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        inside = sorted((p.parent for p in path.rglob(METRICS_FILE)), key=_natural)
        if not inside:
            raise ValueError(f"{path}: no {METRICS_FILE} in it or below it: not a grace-train run or sweep directory")
        found.extend(inside)
    return list(dict.fromkeys(found))


def _natural(path: Path) -> list[Any]:
    """Sweep jobs "2_..." before "10_...": numbers compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def chosen_steps(run: Run, steps: Sequence[int]) -> list[int]:
    """The requested steps that have logged rationales; default: the first, middle and last logged step."""
    logged = sorted({int(row["step"]) for row in run.rationales})
    if steps:
        return [step for step in steps if step in logged]
    if len(logged) <= 3:
        return logged
    return [logged[0], logged[len(logged) // 2], logged[-1]]


def write_report(paths: Sequence[Path], out: Path | None = None, *, sample_steps: Sequence[int] = (), explain_pairs: int = 0) -> Path:
    """Write the report of the runs at (or under) ``paths`` into ``out``; returns ``out/report.md``.

    ``explain_pairs``: explain that many fixed held-out pairs at each run's first and last checkpoint
    (``grace.runs.explained_pairs``; loads both models, so off by default).

    ``out`` defaults to ``<path>/report`` for one path (a run or a sweep), else ``<common parent>/report``.
    """
    run_paths = find_runs([Path(p) for p in paths])
    if out is None:
        out = (Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath([Path(p).resolve() for p in paths]))) / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(path, label) for path, label in zip(run_paths, _labels(run_paths))]
    figures = draw_all([Series.from_rows(run.label, run.metrics) for run in runs], out)

    lines = [f"# GRACE run report ({len(runs)} run{'s' if len(runs) > 1 else ''})", ""]
    lines += _runs_section(runs, out)
    lines += ["## Training curves", ""]
    lines += [f"### {spec.title}\n\n![{spec.title}]({file.name})\n" for spec, file in figures]
    evaluated = [run for run in runs if run.evaluation]
    if evaluated:
        lines += ["## Evaluation", ""]
        for run in evaluated:
            link = os.path.relpath(run.path / EVAL_DIR / "results.md", out)
            lines += [f"### {run.label}", "", f"From [{link}]({link}):", "", run.evaluation.strip(), ""]
    if explain_pairs > 0:
        from grace.runs.explained_pairs import explained_pairs_section

        lines += ["## Explained held-out pairs", ""]
        for number, run in enumerate(runs):
            prefix = f"{number + 1}_" if len(runs) > 1 else ""
            lines += ([f"### {run.label}", ""] if len(runs) > 1 else []) + explained_pairs_section(run.path, out, explain_pairs, label=prefix)
    lines += ["## Sample rationales", ""]
    for run in runs:
        lines += _samples_section(run, chosen_steps(run, sample_steps), several=len(runs) > 1)
    report = out / REPORT_FILE
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short, distinct labels: the folder name, cut to 48 characters (with the job number kept first)."""
    labels = [path.name if len(path.name) <= 48 else path.name[:45] + "..." for path in paths]
    if len(set(labels)) < len(labels):  # runs in different folders with the same name
        labels = [f"{path.parent.name}/{label}" for path, label in zip(paths, labels)]
    return labels


def _runs_section(runs: Sequence[Run], out: Path) -> list[str]:
    if len(runs) == 1:
        run = runs[0]
        lines = [f"Run: `{run.path}`, {len(run.metrics)} logged steps.", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(run.config[key])} |" for key in KEY_SETTINGS if key in run.config]
        return lines + [""]
    differing = [key for key in dict.fromkeys(k for run in runs for k in run.config) if len({repr(run.config.get(key)) for run in runs}) > 1]
    differing = [key for key in differing if not key.startswith(("trainer.output_dir", "logger."))]
    header = ["run", "steps", "reward/total_mean (last)", "final eval mean", "sweep value", *differing]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for run in runs:
        link = os.path.relpath(run.path, out)
        cells = [f"[{run.label}]({link})", str(len(run.metrics)), _number(run.last("reward/total_mean"))]
        cells += [_number(None if run.final_mean is None else 100 * run.final_mean), _number(_sweep_value(run))]
        cells += [_cell(run.config.get(key)) for key in differing]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Final eval mean: the trained row of each run's before/after table, x100. "
        "Columns after `sweep value`: the settings that differ between the runs."
    )
    return lines + ["", note, ""]


def _sweep_value(run: Run) -> float | None:
    """The value the job returned to its sweeper (its wandb summary's ``sweep/value``), recomputed from the
    run's files with the run's own ``sweep.*`` settings; None when the run lacks its metric."""
    from grace.runs.sweep_value import MetricNotFound, resolve_metric, sweep_value

    scores = None
    results_json = run.path / EVAL_DIR / "results.json"
    if results_json.is_file():
        from grace.evaluation.report import ComparisonTable

        scores = ComparisonTable.from_dict(json.loads(results_json.read_text())).primary_scores()
    metric = resolve_metric(
        str(run.config.get("sweep.metric", "auto")),
        bool(run.config.get("final_eval.enabled", False)),
        str(run.config.get("objective.name", "grace")),
    )
    try:
        return sweep_value(
            metric, run.metrics, scores, direction=str(run.config.get("sweep.direction", "maximize")),
            reduce=str(run.config.get("sweep.reduce", "last")), last_steps=int(run.config.get("sweep.last_steps", 5)),
            diverged_value=run.config.get("sweep.diverged_value"),
        )  # fmt: skip
    except MetricNotFound:
        return None


def _samples_section(run: Run, steps: Sequence[int], *, several: bool) -> list[str]:
    lines: list[str] = []
    if not steps:
        return [f"{run.label}: no rationales logged.", ""] if several else ["No rationales logged.", ""]
    for step in steps:
        lines += [f"### {run.label + ', ' if several else ''}step {step}", ""]
        for row in (r for r in run.rationales if int(r["step"]) == step):
            flags = " · **truncated**" if row.get("truncated") else ""
            lines.append(
                f"**{row.get('role', '?')}** (group {row.get('group', '?')}) · reward {_number(row.get('reward'))} · "
                f"advantage {_number(row.get('advantage'))}{flags}"
            )
            lines += ["", _quote("text", _shorten(str(row.get("text", "")), MAX_TEXT)), ">", _quote("rationale", str(row.get("rationale", ""))), ""]
    return lines


def _quote(name: str, text: str) -> str:
    """A markdown block quote; ``<`` escaped so a rationale cannot open an HTML tag in the rendered report."""
    body = text.replace("<", "&lt;").strip() or "(empty)"
    return "\n".join(f"> {line}" if i else f"> *{name}:* {line}" for i, line in enumerate(body.splitlines()))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.4g}"


def _cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits (sampled values carry 17), ``|`` escaped."""
    return (f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")


class SweepReport(Callback):
    """Hydra callback (conf/train.yaml): after a sweep, one report over all of its jobs in ``<sweep dir>/report``."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if not config.get("report", {}).get("enabled", True):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            report = write_report([sweep_dir], sweep_dir / "report")
        except ValueError as error:  # e.g. every job failed before logging a step
            print(f"grace-train: no sweep report: {error}", file=sys.stderr)
            return
        print(f"sweep report: {report}")
