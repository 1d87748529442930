"""Training curves as PNG files (matplotlib, Agg): one figure per concept, several runs overlaid.

Every numeric ``metrics.jsonl`` key is drawn somewhere. The known groups get their own figure, in this
order: reward terms (each term's mean and within-group std: a term whose within-group std stays 0 trains
nothing under a group baseline), the total reward per role, advantages, rationale length and
truncation, the policy update (KL, entropy, loss, clipping, gradient norm, learning rate), time per
step, and periodic held-out scores (``eval/*``); keys of no known group go to ``other_metrics.png``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global state, no display
backend, safe to call from a training job.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

NOT_PLOTTED = {"step", "rollout/rows"}  # the x axis, and a constant of the configuration


@dataclass(frozen=True)
class Series:
    """One run's values of every metric: ``values[key]`` is a list of (step, value)."""

    label: str
    values: dict[str, list[tuple[int, float]]]

    @classmethod
    def from_rows(cls, label: str, rows: Sequence[dict[str, Any]]) -> "Series":
        values: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            for key, value in row.items():
                if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.setdefault(key, []).append((int(row["step"]), float(value)))
        return cls(label, values)


@dataclass(frozen=True)
class FigureSpec:
    file: str  # e.g. "reward_terms.png"
    title: str
    panels: list[tuple[str, str]]  # (metric key, panel title), drawn in this order
    columns: int = 2


def reward_terms(keys: Sequence[str]) -> list[str]:
    """Reward terms in logging order, ``total`` first: every ``reward/<term>_within_group_std`` key."""
    terms = [m.group(1) for key in keys if (m := re.fullmatch(r"reward/(.+)_within_group_std", key))]
    return sorted(dict.fromkeys(terms), key=lambda term: term != "total")


def figure_specs(keys: Sequence[str]) -> list[FigureSpec]:
    """The figures for a set of metric keys (the union over the runs): only those with something to draw."""
    keys = list(dict.fromkeys(keys))
    present = set(keys)
    specs: list[FigureSpec] = []
    terms = reward_terms(keys)
    if terms:
        columns = (("_mean", "mean"), ("_within_group_std", "within-group std"))
        panels = [(f"reward/{t}{suffix}", f"{t}: {what}") for t in terms for suffix, what in columns]
        specs.append(FigureSpec("reward_terms.png", "Reward terms: mean and within-group std", panels))
    by_role = [(key, key.removeprefix("reward/total_mean_") + ": mean total reward") for key in keys if key.startswith("reward/total_mean_")]
    if by_role:
        specs.append(FigureSpec("reward_by_role.png", "Total reward by role", by_role))
    fixed = [
        ("advantages.png", "Advantages", ["advantage/mean", "advantage/std", "advantage/abs_mean", "advantage/nonzero_fraction"]),
        ("rationales.png", "Rationale length and truncation",
         ["rollout/rationale_length_mean", "rollout/rationale_length_max", "rollout/truncation_rate", "rollout/input_truncation_rate"]),
        ("policy.png", "Policy update: KL, entropy, loss, clipping",
         ["loss/kl", "loss/entropy", "loss/policy", "loss/clip_fraction", "loss/ratio_max", "optim/grad_norm", "optim/lr"]),
        ("timing.png", "Time per step", ["time/step_seconds", "time/rollout_seconds", "time/generated_tokens_per_second"]),
    ]  # fmt: skip
    for file, title, wanted in fixed:
        panels = [(key, key) for key in wanted if key in present]
        if panels:
            specs.append(FigureSpec(file, title, panels))
    evaluation = [(key, key) for key in keys if key.startswith("eval/")]
    if evaluation:
        specs.append(FigureSpec("eval.png", "Held-out evaluation during training", evaluation))
    drawn = {key for spec in specs for key, _ in spec.panels}
    reward_stats = {f"reward/{t}_std" for t in terms}  # the batch std: the within-group std says more
    rest = [(key, key) for key in keys if key not in drawn and key not in reward_stats]
    if rest:
        specs.append(FigureSpec("other_metrics.png", "Other metrics", rest, columns=3))
    return specs


def draw(spec: FigureSpec, runs: Sequence[Series], path: Path) -> Path:
    """One PNG: a grid of panels, each run a line (with markers when it has few points)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = min(spec.columns, len(spec.panels))
    rows = math.ceil(len(spec.panels) / columns)
    figure = Figure(figsize=(5.0 * columns, 2.8 * rows + (0.4 + 0.25 * len(runs) if len(runs) > 1 else 0.4)), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (key, title) in zip(axes, spec.panels):
        all_steps: set[int] = set()
        for run, colour in zip(runs, colours):
            points = run.values.get(key)
            if not points:
                continue
            steps, values = zip(*points)
            all_steps.update(steps)
            ax.plot(steps, values, color=colour, label=run.label, marker="o" if len(points) <= 20 else None, markersize=3, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(all_steps) == 1:  # one step: a tick at it, not fractions around it
            ax.set_xticks(sorted(all_steps))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(spec.panels) :]:
        ax.set_visible(False)
    figure.suptitle(spec.title, fontsize=11)
    if len(runs) > 1:
        handles = [figure.axes[0].plot([], [], color=c)[0] for c in colours]
        figure.legend(handles, [run.label for run in runs], loc="outside lower center", ncols=min(3, len(runs)), fontsize=7)
    figure.savefig(path, dpi=100)
    return path


def draw_all(runs: Sequence[Series], directory: Path) -> list[tuple[FigureSpec, Path]]:
    """Every figure the runs' metrics call for, written to ``directory``; returns (spec, file) pairs."""
    keys = [key for run in runs for key in run.values]
    return [(spec, draw(spec, runs, directory / spec.file)) for spec in figure_specs(keys)]
