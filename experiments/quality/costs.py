"""Quality against cost: held-out score against rationale tokens per text, from the study's evaluations.

    python experiments/quality/costs.py outputs/quality/third/quality_step18.json [more.json ...] --figure experiments/quality/figures/cost.png

Reads the ``quality.json`` snapshots ``quality.py evaluate`` wrote (each row with its scores, its rationale
tokens per distinct text and texts embedded per second, measured while it was evaluated), groups the rows of
each method at each step (mean ± sample std over seeds), prints one markdown table (method, runs, tokens/text, texts/s,
mean score) and draws the mean score against tokens per text: a plain encoder sits at 0 tokens, a GRACE row
pays one generation per text (the legend gives each row's texts embedded per second on the cores it ran on);
a row with a score and no cost record (the reference encoder) is a dotted line. A row whose every text came
from a cache has no cost figures and is left out of the cost columns (its score still counts). Snapshots
evaluated with the first one's setting (rationale and prompt budgets) are one setting; a row of another
setting is kept apart by its snapshot's file name (e.g. the 64-token setting's base + rationale).
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Method:
    """The evaluated rows of one method at one training step and evaluation setting."""

    name: str  # method, step and, for a setting other than the first snapshot's, that snapshot's name
    row: str  # the method and step alone: the same row of another setting has the same one
    scores: list[float] = field(default_factory=list)  # 3-task mean x100, one per row (seed)
    tokens: list[float] = field(default_factory=list)  # rationale tokens per distinct text, rows that computed
    speeds: list[float] = field(default_factory=list)  # distinct texts per wall second, rows that computed


def read_methods(paths: list[Path]) -> list[Method]:
    """One ``Method`` per method, training step and evaluation setting (the snapshot's ``setting``: those of
    the first snapshot's together, any other labelled by its file name), in the snapshots' row order. A row
    is one measurement however many snapshots repeat it (the base rows are in each): the first one counts.
    Raises SystemExit for a snapshot without per-row cost records (written before quality.py kept them)."""
    methods: dict[str, Method] = {}
    seen: set[tuple[str, int | None]] = set()
    first_setting = None
    for path in paths:
        snapshot = json.loads(path.read_text())
        first_setting = first_setting or snapshot["setting"]
        suffix = "" if snapshot["setting"] == first_setting else f" [{path.stem}]"
        for row in snapshot["rows"]:
            if "rationale_tokens_per_text" not in row:
                raise SystemExit(f"{path}: rows without rationale_tokens_per_text; evaluate again with this checkout's quality.py")
            if (row["label"] + suffix, row.get("step")) in seen:
                continue
            seen.add((row["label"] + suffix, row.get("step")))
            row_name = row["method"] + (f", {row['step']} steps" if "step" in row else "")
            method = methods.setdefault(row_name + suffix, Method(row_name + suffix, row_name))
            if row["scores"].get("mean") is not None:
                method.scores.append(100 * row["scores"]["mean"])
            if row["rationale_tokens_per_text"] is not None:
                method.tokens.append(row["rationale_tokens_per_text"])
            if row["texts_per_second"] is not None:
                method.speeds.append(row["texts_per_second"])
    return list(methods.values())


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def to_markdown(methods: list[Method]) -> str:
    lines = ["| method | runs | rationale tokens / text | texts / s | mean score |", "|---|---:|---:|---:|---:|"]
    for m in methods:
        lines.append(f"| {m.name} | {len(m.scores)} | {_spread(m.tokens, 1)} | {_spread(m.speeds, 1)} | {_spread(m.scores, 2)} |")
    return "\n".join(lines)


def draw(methods: list[Method], figure_path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 4.8), layout="constrained")
    axis = figure.subplots()
    drawn: dict[int, int] = {}  # rounded token count -> points already there: same-cost rows are drawn side by side
    rows: set[str] = set()  # rows drawn, in any setting: a cached row another setting repeats is drawn once
    colors = colormaps["tab20"].colors  # 20 distinct colours (tab10's repeat after 10 rows)
    for m in methods:
        if not m.scores:
            continue
        repeated = m.row in rows
        rows.add(m.row)
        if not m.tokens:  # a reference encoder the study does not time (all-MiniLM-L6-v2): its score as a line
            if not repeated:
                axis.axhline(statistics.fmean(m.scores), color="grey", linestyle=":", linewidth=1, label=m.name)
            continue
        x, y = statistics.fmean(m.tokens), statistics.fmean(m.scores)
        shift = 0.6 * drawn.get(round(x), 0)
        drawn[round(x)] = drawn.get(round(x), 0) + 1
        yerr = statistics.stdev(m.scores) if len(m.scores) > 1 else 0.0
        speed = f" ({statistics.fmean(m.speeds):.1f} texts/s)" if m.speeds else ""
        n = sum(drawn.values()) - 1  # this row's place: tab20's ten dark colours first, then their light pairs
        color = colors[(2 * n) % 20 + (n // 10) % 2]
        axis.errorbar(x + shift, y, yerr=yerr, marker="o", capsize=3, linestyle="none", color=color, label=m.name + speed)
    axis.set_xlabel("rationale tokens per text at evaluation (EOS included; 0: plain encoder)\nrows of the same cost drawn side by side")
    axis.set_ylabel("held-out main score x100, 3-task mean (± std over seeds)")
    axis.grid(alpha=0.3)
    figure.legend(*axis.get_legend_handles_labels(), fontsize=7, loc="outside right upper")
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110)
    print(f"wrote {figure_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", nargs="+", type=Path, help="quality.json files written by quality.py evaluate")
    parser.add_argument("--figure", type=Path, help="draw score against rationale tokens per text here")
    args = parser.parse_args()
    methods = read_methods(args.snapshots)
    print(to_markdown(methods))
    if args.figure:
        draw(methods, args.figure)


if __name__ == "__main__":
    main()
