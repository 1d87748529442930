"""Held-out score against training time, from every evaluation of the quality study.

    python experiments/quality/scores.py outputs/quality/study experiments/quality/figures [held_out_scores.png]

Reads every ``<out>/quality*.json`` that ``quality.py evaluate`` wrote (copy ``quality.json`` aside after each
evaluation, e.g. ``quality_emb12_cft18.json``: each holds the checkpoints evaluated then) and draws
``held_out_scores.png`` (or the file name given third): one panel per task and one for the mean, one line per method (mean over seeds at each
checkpoint step, bars: sample std), against training minutes: its steps times what a step of that method
costs on idle cores (``quality.step_seconds``; the runs shared the cores at times, so summed wall times
would compare contention, not methods). Each method starts at step 0 from the base row it embeds as:
base + rationale for GRACE, base without one for the baselines. Dashed: base + rationale and MiniLM.
Prints the points it drew.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import METHODS, step_seconds  # noqa: E402  (also puts this checkout's grace on the path)

BASE_WITH, BASE_WITHOUT = "SmolLM2-135M base + rationale", "SmolLM2-135M base (no rationale)"
REFERENCE = "all-MiniLM-L6-v2 (reference)"
NO_RATIONALE = {"contrastive fine-tuning (sup.)", "SimCSE (unsup.)"}

Points = dict[str, dict[int, dict[int, dict[str, float]]]]  # method -> step -> seed -> task (and "mean") -> score


def read_points(out: Path) -> tuple[list[str], Points, dict[str, dict[str, float]]]:
    """(tasks, scores of every evaluated checkpoint, scores of the base and reference rows) from ``out``.

    Raises SystemExit when no snapshot has per-row records or two snapshots disagree on the tasks."""
    tasks: list[str] | None = None
    points: Points = {}
    fixed: dict[str, dict[str, float]] = {}
    for path in sorted(out.glob("quality*.json")):
        snapshot = json.loads(path.read_text())
        if "rows" not in snapshot:
            continue
        if tasks not in (None, snapshot["tasks"]):
            raise SystemExit(f"{path}: tasks {snapshot['tasks']} differ from the other snapshots' {tasks}")
        tasks = snapshot["tasks"]
        for row in snapshot["rows"]:
            if "step" in row:
                points.setdefault(row["method"], {}).setdefault(row["step"], {})[row["seed"]] = row["scores"]
            else:
                fixed[row["label"]] = row["scores"]
    if tasks is None:
        raise SystemExit(f"no quality*.json with per-row records under {out}: run `quality.py evaluate --out {out}`")
    return tasks, points, fixed


def main(out: Path, figures: Path, name: str = "held_out_scores.png") -> None:
    from matplotlib.figure import Figure

    tasks, points, fixed = read_points(out)
    per_step = {METHODS[experiment]: seconds for experiment, seconds in step_seconds(out).items()}
    figure = Figure(figsize=(4.2 * (len(tasks) + 1) + 3.5, 3.6), layout="constrained")
    axes = figure.subplots(1, len(tasks) + 1)
    for axis, task in zip(axes, [*tasks, "mean"]):
        for method in [m for m in METHODS.values() if m in points and m in per_step]:
            start = fixed.get(BASE_WITHOUT if method in NO_RATIONALE else BASE_WITH)
            by_step = {0: {0: start}} if start else {}
            by_step.update(points[method])
            steps = sorted(by_step)
            values = [[scores[task] * 100 for scores in by_step[step].values()] for step in steps]
            minutes = [step * per_step[method] / 60 for step in steps]
            spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            axis.errorbar(minutes, [statistics.fmean(v) for v in values], yerr=spreads, marker="o", capsize=3, label=method)
            if task == "mean":
                print(f"{method}: " + ", ".join(f"step {s} ({m:.1f} min) {statistics.fmean(v):.2f}" for s, m, v in zip(steps, minutes, values)))
        for label, style in ((BASE_WITH, "--"), (REFERENCE, ":")):
            if label in fixed:
                axis.axhline(fixed[label][task] * 100, color="grey", linestyle=style, linewidth=1, label=label)
        axis.set_title(task.removeprefix("Grace"))
        axis.set_xlabel("training minutes on 2 idle cores (steps x step time)")
    axes[0].set_ylabel("main score x100 (mean ± std over seeds)")
    figure.legend(*axes[-1].get_legend_handles_labels(), fontsize=7, loc="outside right upper")  # clear of the data
    figures.mkdir(parents=True, exist_ok=True)
    figure.savefig(figures / name, dpi=110)
    print(f"wrote {figures / name}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
