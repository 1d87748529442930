"""The sweep value grace-train returns, an Optuna search on it, and sweeps on the joblib and submitit launchers.

What must hold: the value is the named metric (final evaluation or a metrics.jsonl key, reduced as set),
always finite (a diverged run gets the worst value, so an Optuna search goes on); a search keeps its study
in a SQLite file that a second invocation continues; joblib and submitit jobs each keep their own
directory, finished wandb run and returned value.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from cli_helpers import SMALL, grace_train
from hydra import compose, initialize_config_dir
from train_helpers import compose_config
from wandb_offline import exit_code, run_file, summary

from grace.cli.train import CONF_DIR
from grace.config import ConfigError
from grace.evaluation.report import ComparisonTable
from grace.runs.epilogue import Finisher
from grace.runs.sweep_value import MetricNotFound, find_divergence, resolve_metric, sqlite_storage, sweep_value, worst_value
from grace.training.run_logger import read_metrics
from grace.training.validation import validate

ROWS = [
    {"step": 1, "reward/total_mean": 1.0, "loss/policy": 0.5, "eval/GraceLeeSTS": 0.2},
    {"step": 2, "reward/total_mean": 3.0, "loss/policy": 0.4},
    {"step": 3, "reward/total_mean": 2.0, "loss/policy": 0.3, "eval/GraceLeeSTS": 0.1},
]
FINAL = {"GraceLeeSTS": 0.25, "mean": 0.25}
TINY_EVAL = ["final_eval.enabled=true", "final_eval.tasks=[GraceLeeSTS]", "final_eval.max_new_tokens=2"]


@pytest.mark.parametrize(
    "metric, reduce, last_steps, direction, expected",
    [
        ("reward/total_mean", "last", 2, "maximize", 2.5),  # mean of the last two steps
        ("reward/total_mean", "last", 10, "maximize", 2.0),  # fewer steps than asked: all of them
        ("reward/total_mean", "best", 5, "maximize", 3.0),
        ("loss/policy", "best", 5, "minimize", 0.3),
        ("reward/total_mean", "mean", 5, "maximize", 2.0),
        ("eval/GraceLeeSTS", "last", 1, "maximize", 0.1),  # a periodic metric: steps without it are skipped
        ("final_eval/mean", "last", 5, "maximize", 0.25),
        ("final_eval/GraceLeeSTS", "last", 5, "maximize", 0.25),
    ],
)
def test_the_value_is_the_named_metric_reduced_as_set(metric, reduce, last_steps, direction, expected):
    value = sweep_value(metric, ROWS, FINAL, direction=direction, reduce=reduce, last_steps=last_steps)
    assert value == pytest.approx(expected)


def test_auto_is_the_final_evaluation_when_it_runs_else_the_reward():
    assert resolve_metric("auto", True) == "final_eval/mean"
    assert resolve_metric("auto", False) == "reward/total_mean"
    assert resolve_metric("auto", False, "contrastive") == resolve_metric("auto", False, "simcse") == "infonce/accuracy"
    assert resolve_metric("loss/policy", True) == "loss/policy"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("key", ["loss/policy", "reward/total_mean", "optim/grad_norm"])
def test_a_diverged_run_gets_the_worst_finite_value(bad, key):
    rows = [dict(ROWS[0]), {**ROWS[1], key: bad}, dict(ROWS[2])]
    assert find_divergence(rows).step == 2 and find_divergence(rows).key == key
    assert sweep_value("reward/total_mean", rows, None, direction="maximize") == -1e9
    assert sweep_value("final_eval/mean", rows, FINAL, direction="minimize") == 1e9
    assert sweep_value("reward/total_mean", rows, None, direction="maximize", diverged_value=-5.0) == -5.0


def test_a_non_finite_final_score_is_the_worst_value_too():
    assert sweep_value("final_eval/mean", ROWS, {"mean": float("nan")}, direction="maximize") == worst_value("maximize")


def test_a_metric_the_run_never_logged_says_which_it_did():
    with pytest.raises(MetricNotFound, match=r"reward/totl_mean: no step logged it; metrics.jsonl has \['eval/GraceLeeSTS', 'loss/policy'"):
        sweep_value("reward/totl_mean", ROWS, None, direction="maximize")
    with pytest.raises(MetricNotFound, match="final evaluation did not run"):
        sweep_value("final_eval/mean", ROWS, None, direction="maximize")
    with pytest.raises(MetricNotFound, match=r"has \['GraceLeeSTS', 'mean'\], not 'STS12'"):
        sweep_value("final_eval/STS12", ROWS, FINAL, direction="maximize")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.direction=up"], "sweep.direction='up' is not one of"),
        (["sweep.reduce=median"], "sweep.reduce='median'"),
        (["sweep.last_steps=0"], "sweep.last_steps=0"),
        (["sweep.diverged_value=-inf"], "must be finite"),
        (["sweep.metric=accuracy"], "not a metric name"),
        (["sweep.metric=final_eval/mean"], "set final_eval.enabled=true"),
    ],
)
def test_impossible_sweep_settings_fail_at_start_up(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_a_job_that_crashed_after_diverging_gets_the_worst_value_and_any_other_crash_none(tmp_path):
    """grace-train's handler for a job that raised: a NaN first means a bad trial (worst value), else a bug."""
    finisher = Finisher(compose_config("sweep.direction=minimize"), sweeping=True)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert finisher.diverged_value(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "loss/policy": float("nan")}) + "\n")
    assert finisher.diverged_value(tmp_path) == 1e9 and str(finisher.divergence) == "loss/policy = nan at step 2"


def test_sqlite_storage_makes_the_folder_and_an_absolute_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = sqlite_storage("multirun/search/x/study.sqlite")
    assert url == f"sqlite:///{tmp_path}/multirun/search/x/study.sqlite" and (tmp_path / "multirun/search/x").is_dir()


def _compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_the_shipped_search_composes_with_its_study_file_and_the_sweep_direction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _compose_with_hydra("hparams_search=grace_optuna", "sweep.direction=minimize", "sweep.metric=final_eval/GraceLeeSTS")
    sweeper = cfg.hydra.sweeper
    # Hydra's Optuna sweeper with grace's loop (failed trials recorded, the search goes on): grace/runs/optuna_search.py
    assert sweeper._target_ == "hydra_plugins.grace.GraceOptunaSweeper" and sweeper.max_failure_rate == 0.5
    assert sweeper.direction == "minimize" and sweeper.storage == f"sqlite:///{tmp_path}/multirun/search/grace/study.sqlite"
    assert set(sweeper.params) == {"reward.tau", "reward.w_cluster", "reward.w_cross", "trainer.lr", "rollout.max_new_tokens"}
    assert cfg.final_eval.enabled and cfg.hydra.mode.name == "MULTIRUN"
    validate(compose_config("hparams_search=grace_optuna"))  # the job's side of it is a valid training config


def test_the_slurm_launcher_example_composes_into_submitit_with_one_gpu_per_job():
    launcher = _compose_with_hydra("hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")
    assert launcher.submitit_folder.endswith(".submitit/%j")


def _trial_value(trial: Path) -> float:
    """The value a trial returned, recomputed from what it left on disk."""
    results = trial / "eval" / "results.json"
    final = ComparisonTable.from_dict(json.loads(results.read_text())).primary_scores() if results.is_file() else None
    return sweep_value("final_eval/mean", read_metrics(trial / "metrics.jsonl"), final, direction="maximize")


def test_an_optuna_search_survives_a_diverged_trial_and_its_study_can_be_continued(tmp_path):
    """Grid over tau = 0.1 and 1e-40 (the second makes every reward NaN): the diverged trial scores -1e9
    instead of ending the search, the best trial is the other one, and a second invocation of the shipped
    search (TPE) adds a trial to the same SQLite study."""
    common = ["-m", "hparams_search=grace_optuna", "experiment=debug", "trainer.max_steps=1", *TINY_EVAL, "logger.progress_bar=false"]
    grid = ["hydra/sweeper/sampler=grid", "hydra.sweeper.params=null", "reward.tau=choice(0.1,1e-40)"]  # tau alone
    done = grace_train(*common, *grid, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study_file = tmp_path / "multirun" / "search" / "grace" / "study.sqlite"
    assert study_file.is_file()
    (first,) = [p for p in study_file.parent.iterdir() if p.is_dir()]
    results = yaml.safe_load((first / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"reward.tau": 0.1}
    trials = {yaml.safe_load((t / ".hydra" / "overrides.yaml").read_text())[0]: t for t in first.glob("trial_*")}
    assert set(trials) == {"reward.tau=0.1", "reward.tau=1e-40"}
    assert results["best_value"] == pytest.approx(_trial_value(trials["reward.tau=0.1"])) and results["best_value"] > 0
    # The NaN reward stops that trial where it appears (named: component, step, rollouts), before a NaN is
    # logged, so its value is the one the study recorded; no final evaluation was run for it.
    recorded = {t.params["reward.tau"]: t.value for t in optuna.load_study(study_name="grace", storage=f"sqlite:///{study_file}").trials}
    assert recorded == {0.1: pytest.approx(results["best_value"]), 1e-40: -1e9}
    assert not (trials["reward.tau=1e-40"] / "eval").exists()
    assert "reward component 'grace' (grace.rewards.grace_terms.grace_component) returned non-finite values at step 1" in done.stderr

    # The shipped search (TPE) under the same study name: a new folder for its jobs, the same study, one more
    # trial (tau stays categorical: Optuna refuses another distribution for a parameter of the study).
    more = ["hydra.sweeper.n_trials=1", "reward.tau=choice(0.1,1e-40)", "rollout.max_new_tokens=choice(4,8)"]
    done = grace_train(*common, *more, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="grace", storage=f"sqlite:///{study_file}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(t.value for t in study.trials)[0] == -1e9 and all(math.isfinite(t.value) for t in study.trials)
    third = [p for p in study_file.parent.iterdir() if p.is_dir() and p != first]
    assert len(third) == 1 and {"reward.tau", "reward.w_cluster", "trainer.lr"} <= set(study.trials[2].params)


def _assert_own_dir_and_finished_wandb_run(job: Path, steps: int) -> dict:
    assert len((job / "metrics.jsonl").read_text().splitlines()) == steps
    run = run_file(job)
    assert exit_code(run) == 0
    values = summary(run)
    assert math.isfinite(values["sweep/value"]) and values["sweep/metric"] == "reward/total_mean"
    return values


def test_a_joblib_sweep_runs_its_jobs_in_parallel_processes_each_with_its_own_run(tmp_path):
    sweep = tmp_path / "sweep"
    done = grace_train(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=tiny-random", "reward=paper,contrastive",
        "trainer.max_steps=1", "report.enabled=false", f"hydra.sweep.dir={sweep}", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]  # report.enabled=false: no sweep report either
    for job in jobs:
        _assert_own_dir_and_finished_wandb_run(job, steps=1)
        assert not (job / "report").exists()
    assert len({run_file(job).name for job in jobs}) == 2  # two wandb runs


def test_a_submitit_local_sweep_returns_each_jobs_value(tmp_path):
    sweep = tmp_path / "sweep"
    done = grace_train(
        "-m", "hydra/launcher=submitit_local", "model=tiny-random", "reward=paper,contrastive", "trainer.max_steps=1",
        f"hydra.sweep.dir={sweep}", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    returned = []
    for result in sorted((sweep / ".submitit").glob("*/*_result.pkl")):
        status, job_return = pickle.loads(result.read_bytes())
        assert status == "success" and job_return.status.name == "COMPLETED"
        returned.append((Path(job_return.hydra_cfg.hydra.runtime.output_dir).name, job_return.return_value))
    assert [name for name, _ in returned] == [job.name for job in jobs]
    for job, (_, value) in zip(jobs, returned):
        assert _assert_own_dir_and_finished_wandb_run(job, steps=1)["sweep/value"] == pytest.approx(value)
        assert value == pytest.approx(read_metrics(job / "metrics.jsonl")[-1]["reward/total_mean"])
    assert (sweep / "report" / "report.md").is_file()

