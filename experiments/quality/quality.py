"""The quality study: train every method with several seeds, evaluate every checkpoint the same way.

    python experiments/quality/quality.py train    --out outputs/quality                  # 7 methods x 3 seeds
    python experiments/quality/quality.py evaluate --out outputs/quality                  # + base rows, MiniLM
    python experiments/quality/quality.py budget   --out outputs/quality --minutes 30     # steps per method
    python experiments/quality/quality.py budget   --out outputs/quality --as-long-as quality_grace_embedding
    python experiments/quality/quality.py guards   --out outputs/quality --methods two_stage_gentle  # guard firings

``train`` runs one Hydra multirun of ``grace-train`` over the experiment overlays
``conf/experiment/quality_*.yaml`` and the seeds, into ``<out>/runs/<overrides>/``, with
``trainer.resume=auto``: run it again to continue every unfinished run (finished ones stop at once), or
again with a larger ``trainer.max_steps`` to continue finished ones: the budget is not part of a run's name.
Arguments after ``--`` go to every job (e.g. ``-- trainer.max_steps=2`` for a pilot).

``evaluate`` finds the newest checkpoint of every run and evaluates it, the base model without and with a
rationale and all-MiniLM-L6-v2 with ONE setting (tasks, rationale length, prompt budget, greedy decoding)
on held-out data (the offline suite: its chatterbot categories are held out of training, the other tasks
are other corpora), through ``grace.evaluation.runner.evaluate_encoders``. Each checkpoint embeds as it
was trained: with a rationale (GRACE) or without (contrastive, SimCSE). It writes ``<out>/eval/results.md``
(every row) and ``<out>/quality.md`` / ``quality.json`` (mean ± spread over seeds per method, and every row
with its run's step and training time: copy it aside after each budget for ``scores.py``). ``--methods``
evaluates some methods only. Re-running resumes from mteb's result cache and the embedding cache.

``budget`` reads the step times the runs measured (``time/step_seconds`` in ``metrics.jsonl``) and prints
the ``trainer.max_steps`` of each method that fits a training budget per run (``step_seconds``): given in
minutes, or as the minutes another method's runs trained (equal training minutes, measured on both sides).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's grace, also when it is not the installed one
METHODS = {  # experiment overlay -> row name; order of the table
    "quality_grace_paper": "GRACE, paper reward (sup.)",
    "quality_grace_contrastive": "GRACE, contrastive reward (sup.)",
    "quality_grace_embedding": "GRACE + embedding loss (sup.)",
    "quality_grace_no_truncation_rule": "GRACE + embedding loss, no truncation rule (sup.)",
    "quality_contrastive": "contrastive fine-tuning (sup.)",
    "quality_grace_unsupervised": "GRACE (unsup.)",
    "quality_simcse": "SimCSE (unsup.)",
    # Third pass: one 2026 policy option each, against quality_grace_no_truncation_rule at the same budget.
    "quality_option_per_component": "option: per-component normalisation (GDPO)",
    "quality_option_constant": "option: constant aggregation (Dr. GRPO)",
    "quality_option_queries": "option: rationales for queries only",
    "quality_option_64_tokens": "option: 64-token rationales",
    # Third pass: the two-stage presets (conf/experiment/two_stage_*.yaml), each RL run from the SFT run of its seed.
    "two_stage_sft": "two stages: SFT warm start",
    "two_stage_gentle": "two stages: SFT, then gentle GRACE",
    "two_stage_aggressive": "two stages: SFT, then aggressive GRACE",
    "two_stage_gentle_from_base": "gentle GRACE from the base model (no SFT)",
}
DEFAULT_TRAINED = [m for m in METHODS if m.startswith("quality_") and not m.startswith("quality_option_")]  # the 7 methods
BASE = "packaged:smollm2-135m"
# Overrides left out of a run's directory name: conf/train.yaml's list plus the budget and the progress bar, and
# the inputs a stage of two-stage training is given (the warm start, the demonstrations): its experiment names it.
NOT_IN_RUN_NAME = (
    "trainer.output_dir", "trainer.resume", "logger", "logger.progress_bar", "trainer.max_steps", "hydra.sweep.dir", "hparams_search",
    "model.source", "data.train_file",
)  # fmt: skip


def _methods(given: str) -> list[str]:
    methods = given.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: use {', '.join(METHODS)}")
    return methods


def train(args: argparse.Namespace, overrides: list[str]) -> int:
    methods = _methods(args.methods)
    command = [
        sys.executable, "-m", f"grace.cli.{args.cli}", "-m",
        f"experiment={','.join(methods)}", f"seed={args.seeds}",
        f"hydra.sweep.dir={Path(args.out).resolve() / 'runs'}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}",  # no job number: the same run keeps its directory
        # ... also when it continues at a larger budget: how far a run goes and how it prints are not its name.
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(NOT_IN_RUN_NAME)}]",
        "trainer.resume=auto",
        *overrides,
    ]  # fmt: skip
    print(" ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


def find_runs(out: Path) -> list[tuple[str, int, Path]]:
    """(experiment, seed, newest checkpoint) of every run under ``<out>/runs`` with a finished checkpoint."""
    from grace.training.checkpoint import latest_checkpoint

    runs = []
    for job in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:
        overrides = job / ".hydra" / "overrides.yaml"
        checkpoint = latest_checkpoint(job)
        if not overrides.is_file() or checkpoint is None:
            continue
        given = dict(item.split("=", 1) for item in yaml.safe_load(overrides.read_text()) if "=" in item)
        if given.get("experiment") in METHODS:
            runs.append((given["experiment"], int(given.get("seed", 0)), checkpoint))
    return sorted(runs, key=lambda run: (list(METHODS).index(run[0]), run[1]))


def evaluate(args: argparse.Namespace) -> None:
    from grace.evaluation.config import EvalSettings, ModelConfig
    from grace.evaluation.runner import EncoderSpec, evaluate_encoders
    from grace.evaluation.seeds import summarise, to_markdown

    out = Path(args.out)
    runs = [run for run in find_runs(out) if run[0] in _methods(args.methods)]
    if not runs:
        raise SystemExit(f"no finished run under {out / 'runs'}: run `quality.py train --out {out}` first")
    labels: dict[str, str] = {}  # row label -> method
    trained: dict[str, dict] = {}  # row label -> how far its run had trained
    specs: list[ModelConfig] = [
        EncoderSpec(source=BASE, label="SmolLM2-135M base (no rationale)", rationale=False),
        EncoderSpec(source=BASE, label="SmolLM2-135M base + rationale", rationale=True),
    ]
    for experiment, seed, checkpoint in runs:
        label = f"{METHODS[experiment]} seed {seed}"
        if label in labels:
            raise SystemExit(f"two runs of {experiment} seed={seed} under {out / 'runs'} (other overrides): keep one, or use another --out")
        labels[label] = METHODS[experiment]
        trained[label] = {"method": METHODS[experiment], "seed": seed, **training_done(checkpoint)}
        # rationale=None: the checkpoint embeds as its saved settings say (GRACE with, the baselines without).
        specs.append(EncoderSpec(source=str(checkpoint), label=label))
    if not args.no_reference:
        specs.append(ModelConfig(source="packaged:all-minilm-l6-v2", label="all-MiniLM-L6-v2 (reference)", kind="sentence-transformers"))
    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size,
        show_progress=False,
    )
    table = evaluate_encoders(specs, args.tasks.split(","), out / "eval", settings)
    summaries = summarise(table, labels)
    markdown = to_markdown(table, summaries)
    setting = f"tasks {args.tasks}; greedy rationales of at most {args.max_new_tokens} tokens; prompts cut at {args.max_prompt_tokens} tokens"
    (out / "quality.md").write_text(f"{markdown}\nOne evaluation setting for every row: {setting}. Every row: {out / 'eval' / 'results.md'}\n")
    records = [{"method": s.method, "runs": s.runs, "rationale": s.rationale, "mean": s.mean, "spread": s.spread} for s in summaries]
    rows = [
        {
            "label": row.label, **trained.get(row.label, {"method": row.label}), "scores": {**row.scores, "mean": row.mean(table.tasks)},
            "truncation_rate": row.truncation_rate, "rationale_tokens_per_text": row.rationale_tokens_per_text,
            "texts_per_second": row.texts_per_second, "from_cache": row.from_cache,
        }
        for row in table.rows
    ]  # one per evaluated row: scores.py draws held-out score against training time, costs.py against tokens per text
    (out / "quality.json").write_text(json.dumps({"setting": setting, "tasks": table.tasks, "methods": records, "rows": rows}, indent=2) + "\n")
    print(markdown)


def training_done(checkpoint: Path) -> dict:
    """``step`` of ``checkpoint`` and ``training_seconds``: the summed ``time/step_seconds`` up to it.

    A resumed run's ``metrics.jsonl`` may log a step twice (steps after the resume point that a stopped
    start had already logged): the last record of a step counts.
    """
    from grace.training.run_logger import read_metrics

    step = int(checkpoint.name.removeprefix("step-"))
    seconds = {}
    for record in read_metrics(checkpoint.parent.parent / "metrics.jsonl"):
        if record.get("step", step + 1) <= step and "time/step_seconds" in record:
            seconds[record["step"]] = record["time/step_seconds"]
    return {"step": step, "training_seconds": round(sum(seconds.values()), 1)}


def step_seconds(out: Path) -> dict[str, float]:
    """Experiment -> seconds a training step costs on idle cores: the lower quartile of ``time/step_seconds``
    over every logged step of its runs but the first (which also warms caches up). The study's runs shared
    the 2 cores with other work at times, and sharing only ever slows a step down."""
    from grace.training.run_logger import read_metrics

    seconds: dict[str, list[float]] = {}
    for experiment, _, checkpoint in find_runs(out):
        rows = read_metrics(checkpoint.parent.parent / "metrics.jsonl")
        seconds.setdefault(experiment, []).extend(row["time/step_seconds"] for row in rows if row.get("step", 0) > 1 and "time/step_seconds" in row)
    return {experiment: statistics.quantiles(times, n=4)[0] if len(times) > 1 else times[0] for experiment, times in seconds.items() if times}


def budget(args: argparse.Namespace) -> None:
    """Steps per method that fit ``--minutes`` of training, or the minutes ``--as-long-as``'s runs trained
    (their newest step x its step time), from the measured step times of each method's runs."""
    out = Path(args.out)
    per_step = step_seconds(out)
    minutes = args.minutes
    if args.as_long_as:
        steps = {checkpoint.name for experiment, _, checkpoint in find_runs(out) if experiment == args.as_long_as}
        if len(steps) != 1 or args.as_long_as not in per_step:
            raise SystemExit(f"--as-long-as {args.as_long_as}: its runs under {out / 'runs'} must all stop at one step (found {sorted(steps)})")
        minutes = int(steps.pop().removeprefix("step-")) * per_step[args.as_long_as] / 60
        print(f"{args.as_long_as}: {minutes:.2f} min of training")
    for experiment, seconds in per_step.items():
        print(f"{experiment}: {seconds:.1f} s/step -> trainer.max_steps={max(1, round(minutes * 60 / seconds))}")


def guards(args: argparse.Namespace) -> None:
    """What the guards and the held-out set recorded in each run of ``--methods``: one markdown row per run with
    the steps at which each guard fired (``guard/<name>`` = 1), held-out triplet accuracy and margin at its
    first and last evaluation, and the mean rationale length of its first and last step's rollouts."""
    from grace.training.run_logger import read_metrics

    def first_last(rows: list[dict], key: str, digits: int) -> str:
        values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
        return f"{values[0]:.{digits}f} → {values[-1]:.{digits}f}" if values else "-"

    print("| method | seed | guards fired (name: steps) | held-out accuracy | held-out margin | rationale tokens |")
    print("|---|---:|---|---|---|---|")
    for experiment, seed, checkpoint in find_runs(Path(args.out)):
        if experiment not in _methods(args.methods):
            continue
        rows = list({row["step"]: row for row in read_metrics(checkpoint.parent.parent / "metrics.jsonl") if "step" in row}.values())
        fired: dict[str, list[int]] = {}
        for row in rows:
            for key, value in row.items():
                if key.startswith("guard/") and value == 1:
                    fired.setdefault(key.removeprefix("guard/"), []).append(row["step"])
        said = "; ".join(f"{name}: {', '.join(map(str, steps))}" for name, steps in sorted(fired.items())) or "none"
        cells = [first_last(rows, key, digits) for key, digits in (("eval/triplet_accuracy", 3), ("eval/triplet_margin", 3), ("rollout/rationale_length_mean", 1))]
        print(f"| {METHODS[experiment]} | {seed} | {said} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train every method and seed (Hydra multirun, resumable)")
    train_parser.add_argument("--out", default="outputs/quality")
    train_parser.add_argument("--seeds", default="0,1,2")
    train_parser.add_argument("--methods", default=",".join(DEFAULT_TRAINED), help="default: the 7 methods; the options by name")
    train_parser.add_argument("--cli", choices=("train", "sft"), default="train", help="grace-train, or grace-sft for an SFT stage")
    evaluate_parser = commands.add_parser("evaluate", help="evaluate every run's newest checkpoint and the base rows")
    evaluate_parser.add_argument("--out", default="outputs/quality")
    evaluate_parser.add_argument("--methods", default=",".join(METHODS), help="evaluate these methods' runs (the base rows always)")
    evaluate_parser.add_argument("--tasks", default="offline", help="comma-separated tasks or suites (default: the offline suite)")
    evaluate_parser.add_argument("--max-new-tokens", type=int, default=32, help="rationale length, as in training")
    evaluate_parser.add_argument("--max-prompt-tokens", type=int, default=256, help="prompt budget, as in training")
    evaluate_parser.add_argument("--batch-size", type=int, default=32)
    evaluate_parser.add_argument("--no-reference", action="store_true", help="leave out the all-MiniLM-L6-v2 row")
    budget_parser = commands.add_parser("budget", help="steps per method that fit a training budget, from measured step times")
    budget_parser.add_argument("--out", default="outputs/quality")
    budget_size = budget_parser.add_mutually_exclusive_group(required=True)
    budget_size.add_argument("--minutes", type=float)
    budget_size.add_argument("--as-long-as", metavar="METHOD", help="the training minutes of this method's runs at their newest checkpoint")
    guards_parser = commands.add_parser("guards", help="what the guards and the held-out set recorded in each run")
    guards_parser.add_argument("--out", default="outputs/quality")
    guards_parser.add_argument("--methods", default=",".join(METHODS))
    argv = sys.argv[1:]
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    if args.command == "train":
        raise SystemExit(train(args, overrides))
    if overrides:
        parser.error(f"{args.command} takes no Hydra overrides")
    {"evaluate": evaluate, "budget": budget, "guards": guards}[args.command](args)


if __name__ == "__main__":
    main()
