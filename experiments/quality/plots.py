"""Training curves of the quality study, finished or not, from every run's ``metrics.jsonl``.

    python experiments/quality/plots.py outputs/quality/study experiments/quality/figures

Reads every job under ``<out>/runs`` whose ``.hydra/overrides.yaml`` names a quality overlay (runs still in
progress included: whatever steps ``metrics.jsonl`` holds) and writes into the figure folder, with
``grace.runs.plots.draw`` (one column per method, one row per metric, one line per seed):

* ``grace_rewards.png``: the GRACE runs' total reward and every reward term they log (``reward/<term>_mean``);
* ``grace_rollouts.png``: rationale length, truncation, mean cosine between rollouts' embeddings, the
  embedding loss, and the two diagnostics of a live policy gradient (non-zero advantages, gradient norm);
* ``baselines.png``: contrastive fine-tuning and SimCSE: InfoNCE loss and accuracy, mean cosine.

A panel titled "not logged" is a metric that method does not have (e.g. the embedding loss of GRACE
without it). Prints one line per run (method, seed, steps logged), then the figures' numbers: for each
method and metric, the mean over seeds and steps in blocks of steps (``BLOCKS``), as the README tables them.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import METHODS  # noqa: E402  (also puts this checkout's grace on the path)

from grace.runs.plots import FigureSpec, Series, draw, reward_terms  # noqa: E402
from grace.training.run_logger import read_metrics  # noqa: E402

GRACE = [method for method in METHODS if method.startswith("quality_grace")]
BASELINES = ["quality_contrastive", "quality_simcse"]
ROLLOUT_KEYS = ["rollout/rationale_length_mean", "rollout/truncation_rate", "rollout/embedding_mean_cos",
                "loss/embedding", "advantage/nonzero_fraction", "optim/grad_norm"]  # fmt: skip
BASELINE_KEYS = ["loss/infonce", "infonce/accuracy", "embedding/mean_cos"]
TABLED_KEYS = [*ROLLOUT_KEYS[:4], "loss/embedding_accuracy", "reward/total_mean", "optim/grad_norm", *BASELINE_KEYS]
BLOCKS = [(1, 3), (4, 6), (7, 12), (13, 18), (19, 27), (28, 36), (37, 45), (46, 54)]  # first and last step

Runs = dict[tuple[str, int], Series]  # (experiment, seed) -> that run's metrics


def read_runs(out: Path) -> Runs:
    """Every quality run under ``<out>/runs`` with at least one logged step, by (experiment, seed)."""
    runs: Runs = {}
    for job in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:
        overrides = job / ".hydra" / "overrides.yaml"
        if not overrides.is_file():
            continue
        given = dict(item.split("=", 1) for item in yaml.safe_load(overrides.read_text()) if "=" in item)
        rows = read_metrics(job / "metrics.jsonl")
        if given.get("experiment") not in METHODS or not rows:
            continue
        key = (given["experiment"], int(given.get("seed", 0)))
        if key in runs:
            raise SystemExit(f"two runs of {key[0]} seed={key[1]} under {out / 'runs'} (other overrides): keep one")
        runs[key] = Series.from_rows(job.name, rows)
    return runs


def grid(file: str, title: str, methods: list[str], keys: list[str], runs: Runs, directory: Path) -> Path | None:
    """One PNG: a column per method that has runs, a row per key some run logged, a line per seed.

    ``draw`` gives every Series one colour across panels, so a Series is one seed: its values are the
    runs of that seed, keyed ``<experiment>|<metric>`` so that each panel picks one method's run."""
    methods = [m for m in methods if any(experiment == m for experiment, _ in runs)]
    logged = {(m, key) for (m, _), run in runs.items() for key in run.values}
    keys = [key for key in keys if any((m, key) in logged for m in methods)]
    if not methods or not keys:
        return None
    seeds = sorted({seed for m, seed in runs if m in methods})
    series = [
        Series(f"seed {seed}", {f"{m}|{key}": points for (m, s), run in runs.items() if s == seed for key, points in run.values.items()})
        for seed in seeds
    ]  # fmt: skip
    panels = [
        (f"{m}|{key}", f"{m.removeprefix('quality_')}: {key}" + ("" if (m, key) in logged else " (not logged)"))
        for key in keys for m in methods
    ]  # fmt: skip
    spec = FigureSpec(file, f"{title}\nseeds {', '.join(map(str, seeds))}", panels, columns=len(methods))
    return draw(spec, series, directory / file)


def print_blocks(runs: Runs) -> None:
    """Per method and metric: the mean over every (seed, step) in each block of ``BLOCKS`` that has steps."""
    for method in METHODS:
        for key in TABLED_KEYS:
            by_step = [dict(run.values[key]) for (m, _), run in runs.items() if m == method and key in run.values]
            means = []
            for first, last in BLOCKS:
                values = [value for steps in by_step for step, value in steps.items() if first <= step <= last]
                if values:
                    means.append(f"{first}-{last}: {statistics.fmean(values):.2f}")
            if means:
                print(f"{method} {key}: " + ", ".join(means))


def main(out: Path, figures: Path) -> None:
    runs = read_runs(out)
    if not runs:
        raise SystemExit(f"no quality run with a logged step under {out / 'runs'}")
    for (experiment, seed), run in sorted(runs.items(), key=lambda item: (list(METHODS).index(item[0][0]), item[0][1])):
        steps = max((step for points in run.values.values() for step, _ in points), default=0)
        print(f"{experiment} seed {seed}: {steps} steps logged")
    figures.mkdir(parents=True, exist_ok=True)
    grace_keys = [key for (m, _), run in runs.items() if m in GRACE for key in run.values]
    rewards = [f"reward/{term}_mean" for term in reward_terms(grace_keys)]  # total first, then each term
    written = [
        grid("grace_rewards.png", "GRACE: total reward and its terms (mean over rollouts)", GRACE, rewards, runs, figures),
        grid("grace_rollouts.png", "GRACE: rollouts, embedding loss, gradient signal", GRACE, ROLLOUT_KEYS, runs, figures),
        grid("baselines.png", "Baselines (no rationale): InfoNCE", BASELINES, BASELINE_KEYS, runs, figures),
    ]  # fmt: skip
    for path in written:
        if path is not None:
            print(f"wrote {path}")
    print_blocks(runs)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]), Path(sys.argv[2]))
