"""The figures and tables of experiments/two_stage/README.md, from the runs of run.sh.

    python experiments/two_stage/plots.py outputs/two_stage experiments/two_stage

Reads ``<runs>/{sft,gentle,aggressive}/metrics.jsonl`` and writes, into the figure folder, PNGs drawn with
``grace.runs.plots`` (both RL presets overlaid): every reward component, the held-out scores, the rollouts
(length, truncation, repetition, diversity, KL) and the SFT stage; then prints markdown tables of the numbers
the README quotes and of the steps at which each guard fired.
"""
from __future__ import annotations

import sys
from pathlib import Path

from grace.runs.plots import FigureSpec, Series, draw
from grace.training.run_logger import read_metrics

PRESETS = ("gentle", "aggressive")
COMPONENTS = ("total", "grace", "length", "degenerate", "truncation")
FIGURES = [
    FigureSpec("reward_components.png", "Reward components (contribution to the total: mean over the step's rollouts)",
               [(f"reward/{c}_mean", c) for c in COMPONENTS]
               + [("reward/degenerate_repetition_mean", "degenerate part: repetition (before weight)"),
                  ("reward/degenerate_empty_mean", "degenerate part: near-empty (before weight)")], columns=2),
    FigureSpec("heldout.png", "Held-out triplets (8, greedy rationales), every 4 steps; step 0 = the SFT model",
               [("eval/triplet_accuracy", "triplet accuracy"), ("eval/triplet_margin", "margin cos(q,p) - cos(q,n)"),
                ("eval/mean_cos", "mean cosine between different texts"), ("eval/rationale_words_mean", "rationale words"),
                ("eval/truncation_rate", "truncation rate"), ("eval/repetition_rate", "repeated word 3-grams")]),
    FigureSpec("rollouts.png", "Rollouts during training: length, truncation, repetition, diversity, KL",
               [("rollout/rationale_length_mean", "rationale length (tokens)"), ("rollout/truncation_rate", "truncation rate"),
                ("rollout/repetition_rate", "repeated token 3-grams"), ("rollout/embedding_mean_cos", "mean cosine between different texts"),
                ("loss/kl", "KL to the SFT model (k3)"), ("reward/grace_within_group_std", "GRACE reward: within-group std")]),
    FigureSpec("guards.png", "Guards (1 = fired at that step)",
               [(f"guard/{g}", g) for g in ("length", "repetition", "diversity", "reward_vs_heldout")]),
]  # fmt: skip
SFT_FIGURE = FigureSpec("sft.png", "Stage 1: supervised fine-tuning on best-of-3 demonstrations",
                        [("loss/sft", "loss (token-mean NLL)"), ("sft/token_accuracy", "token accuracy (training batch)"),
                         ("eval/sft_loss", "held-out loss (6 demonstrations)"), ("eval/token_accuracy", "held-out token accuracy")])  # fmt: skip


def values(rows, key):
    return [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]


def main(runs_dir: Path, figures: Path) -> None:
    runs = {name: read_metrics(runs_dir / name / "metrics.jsonl") for name in ("sft", *PRESETS)}
    figures.mkdir(parents=True, exist_ok=True)
    series = [Series.from_rows(name, runs[name]) for name in PRESETS]
    for spec in FIGURES:
        draw(spec, series, figures / spec.file)
    draw(SFT_FIGURE, [Series.from_rows("sft", runs["sft"])], figures / SFT_FIGURE.file)

    print("| preset | " + " | ".join(f"{c} (first → last 4 steps)" for c in COMPONENTS) + " |")
    print("|---|" + "---|" * len(COMPONENTS))
    for name in PRESETS:
        cells = []
        for c in COMPONENTS:
            v = [x for _, x in values(runs[name], f"reward/{c}_mean")]
            cells.append(f"{v[0]:.3f} → {sum(v[-4:]) / len(v[-4:]):.3f}" if v else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    keys = ["eval/triplet_accuracy", "eval/triplet_margin", "eval/mean_cos", "eval/rationale_words_mean", "eval/truncation_rate"]
    for name in PRESETS:
        print(f"{name}: " + "; ".join(f"{k.removeprefix('eval/')} " + " ".join(f"{s}:{v:.3f}" for s, v in values(runs[name], k)) for k in keys))
    print()
    for name in PRESETS:
        rows = runs[name]
        fired = {g: [s for s, v in values(rows, f"guard/{g}") if v == 1.0] for g in ("length", "repetition", "diversity", "reward_vs_heldout")}
        lengths = values(rows, "rollout/rationale_length_mean")
        print(f"{name}: guards fired at {fired}; rationale length {lengths[0][1]:.1f} → {lengths[-1][1]:.1f} tokens; "
              f"truncation {values(rows, 'rollout/truncation_rate')[0][1]:.2f} → {values(rows, 'rollout/truncation_rate')[-1][1]:.2f}; "
              f"step seconds mean {sum(v for _, v in values(rows, 'time/step_seconds')) / len(lengths):.0f}")  # fmt: skip
    sft = runs["sft"]
    print(f"sft: loss {values(sft, 'loss/sft')[0][1]:.3f} → {values(sft, 'loss/sft')[-1][1]:.3f}; held-out token accuracy "
          + " ".join(f"{s}:{v:.3f}" for s, v in values(sft, "eval/token_accuracy")))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
