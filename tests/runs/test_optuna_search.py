"""Searches and sweeps survive a failing job: a failed Optuna trial is recorded and the search goes on, a
changed search space on resume is one line naming the parameter (no zombie trial), and a joblib job's error
crosses the process boundary without taking the other job down (grace/runs/optuna_search.py,
grace/runs/portable_errors.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntUniformDistribution, LogUniformDistribution, UniformDistribution
from optuna.trial import TrialState, create_trial

from grace.runs.optuna_search import check_search_space, tolerated_failures
from grace.runs.search_plugin import SearchSpaceChanged

SMALL = ["rollout.max_new_tokens=8", "trainer.batch_size=2", "data.limit=16", "logger.progress_bar=false", "logger=none", "trainer.max_steps=1"]
# Everything but rollout.num_samples fixed, the final evaluation off: a trial is one tiny step.
FIXED = ["reward.tau=0.1", "reward.w_cluster=0.1", "reward.w_cross=0.1", "trainer.lr=1e-6", "final_eval.enabled=false",
         "sweep.metric=reward/total_mean", "hydra/sweeper/sampler=grid", "hydra.sweeper.study_name=s"]


def grace_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "grace.cli.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("rate, n_trials, tolerated", [(0.0, 20, 0), (0.5, 3, 1), (0.5, 20, 10), (0.25, 10, 2), (1.0, 5, 5), (0.3, 10, 3)])
def test_the_failure_budget_is_a_fraction_of_the_whole_search(rate, n_trials, tolerated):
    assert tolerated_failures(rate, n_trials) == tolerated


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_failure_rate_outside_0_1_is_named(rate):
    with pytest.raises(ValueError, match=f"max_failure_rate={rate}"):
        tolerated_failures(rate, 10)


def _study_with(distribution, value) -> optuna.Study:
    study = optuna.create_study(study_name="old")
    study.add_trial(create_trial(params={"p": value}, distributions={"p": distribution}, value=1.0))
    return study


@pytest.mark.parametrize(
    "old, value, new",
    [
        (CategoricalDistribution((1, 2, 4)), 2, CategoricalDistribution((1, 2, 4, 8))),  # a widened choice (the issue's)
        (CategoricalDistribution((32, 64)), 32, CategoricalDistribution((64, 32))),  # reordered
        (UniformDistribution(0.0, 0.5), 0.1, LogUniformDistribution(0.01, 0.5)),  # linear became log
        (IntUniformDistribution(1, 4), 2, UniformDistribution(1.0, 4.0)),  # int became float
    ],
)
def test_a_changed_search_space_is_one_line_naming_the_parameter(old, value, new):
    with pytest.raises(SearchSpaceChanged) as raised:
        check_search_space(_study_with(old, value), {"p": new, "q": UniformDistribution(0, 1)}, "sqlite:///study.sqlite")
    message = str(raised.value)
    assert "'p'" in message and "study 'old'" in message and "hydra.sweeper.study_name=old_2" in message and "\n" not in message


@pytest.mark.parametrize(
    "old, value, new",
    [
        (CategoricalDistribution((1, 2, 4)), 2, CategoricalDistribution((1, 2, 4))),
        (UniformDistribution(0.0, 0.5), 0.1, UniformDistribution(0.0, 0.9)),  # Optuna allows a new float range
    ],
)
def test_a_compatible_search_space_resumes(old, value, new):
    check_search_space(_study_with(old, value), {"p": new}, "sqlite:///study.sqlite")
    check_search_space(None, {"p": new}, "in memory")


def _trials(cwd: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{cwd / 'multirun' / 'search' / 's' / 'study.sqlite'}"
    return optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)


def test_a_refused_trial_is_recorded_as_failed_and_the_search_goes_on_and_a_changed_space_is_refused(tmp_path):
    done = grace_train("hparams_search=grace_optuna", "model=tiny-random", "rollout.num_samples=choice(1,2,4)", *FIXED, *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(tmp_path)
    states = sorted((t.params["rollout.num_samples"], t.state) for t in trials)
    assert states == [(1, TrialState.FAIL), (2, TrialState.COMPLETE), (4, TrialState.COMPLETE)]
    (results,) = (tmp_path / "multirun" / "search" / "s").glob("*/optimization_results.yaml")
    text = results.read_text()
    assert "best_value" in text and "rollout.num_samples=1" in text and "ConfigError" in text  # the failed trial, listed

    widened = grace_train("hparams_search=grace_optuna", "model=tiny-random", "rollout.num_samples=choice(1,2,4,8)", *FIXED, *SMALL, cwd=tmp_path)
    assert widened.returncode == 1
    assert "search parameter 'rollout.num_samples'" in widened.stderr and "hydra.sweeper.study_name=s_2" in widened.stderr
    assert "Traceback" not in widened.stderr
    after = _trials(tmp_path)
    assert len(after) == len(trials) and not [t for t in after if t.state == TrialState.RUNNING]  # no zombie trial


def test_too_many_failures_stop_the_search_with_the_list(tmp_path):
    done = grace_train("hparams_search=grace_optuna", "model=tiny-random", "rollout.num_samples=choice(1)", "hydra.sweeper.max_failure_rate=0",
                       *FIXED, *SMALL, cwd=tmp_path)
    assert done.returncode == 1
    assert "1 of 1 trials failed, more than hydra.sweeper.max_failure_rate=0" in done.stderr and "rollout.num_samples=1" in done.stderr
    assert [t.state for t in _trials(tmp_path)] == [TrialState.FAIL]


def test_a_joblib_job_with_bad_data_fails_alone(tmp_path):
    """The issue's case: a good and a bad data file under hydra/launcher=joblib. The bad job's DataError is
    pickled back to the parent; the good job trains, and each job got cores // n_jobs threads."""
    good_rows = [{"query": f"question {i}?", "positive": f"answer {i}.", "negative": f"other {i}."} for i in range(8)]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in good_rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good_rows[0]) + "\n" + '{"query": "q", "positive": ""}\n')
    sweep = tmp_path / "sweep"
    done = grace_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=tiny-random", f"data.train_file={good},{bad}",
                       f"hydra.sweep.dir={sweep}", *SMALL, cwd=tmp_path)
    assert done.returncode == 1  # the sweep reports its failed job
    assert "BrokenProcessPool" not in done.stderr and "has no attribute 'describe'" not in done.stderr
    assert "bad.jsonl, line 2" in done.stderr
    (good_job,) = [p for p in sweep.iterdir() if p.is_dir() and "good.jsonl" in p.name]
    assert len((good_job / "metrics.jsonl").read_text().splitlines()) == 1
    logs = "".join(p.read_text() for p in good_job.glob("*.log"))
    threads = max(1, joblib.cpu_count() // 2)  # joblib splits the cores over its 2 workers
    assert f"torch threads: {threads} (OMP_NUM_THREADS={threads})" in logs
