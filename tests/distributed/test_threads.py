"""A shared machine: ``import grace`` sets a passive OpenMP wait policy before torch loads, unless the user
chose one, and concurrent jobs split the cores (grace/distributed/threads.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from grace.distributed.threads import PASSIVE, default_wait_policy, job_threads, launcher_jobs

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.mark.parametrize("given, expected, set_here", [(None, PASSIVE, True), ("", PASSIVE, True), ("ACTIVE", "ACTIVE", False), ("passive", "passive", False)])
def test_the_wait_policy_is_passive_unless_the_user_chose_one(given, expected, set_here):
    environ = {} if given is None else {"OMP_WAIT_POLICY": given}
    assert default_wait_policy(environ) is set_here
    assert environ["OMP_WAIT_POLICY"] == expected


def _fresh(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout.strip()


def test_importing_grace_sets_it_without_loading_torch():
    """libgomp reads the variable when torch loads it: ``grace/__init__.py``, which runs before any grace
    module, sets it and loads no torch itself."""
    code = "import sys, os; import grace; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    assert _fresh(code) == "PASSIVE False"
    assert _fresh(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"


@pytest.mark.parametrize("module", ["grace.cli.train", "grace.cli.encode", "grace.cli.index", "grace.cli.eval", "grace.embedding.encoder"])
def test_every_entry_point_runs_with_it(module):
    assert _fresh(f"import os; import {module}; print(os.environ['OMP_WAIT_POLICY'])") == "PASSIVE"


@pytest.mark.parametrize(
    "environ, jobs, cores, threads",
    [
        ({}, 1, 2, 2),
        ({}, 2, 2, 1),
        ({}, 3, 16, 5),
        ({}, 4, 2, 1),  # never below one
        ({"OMP_NUM_THREADS": "3"}, 2, 2, 3),  # the user's (or joblib's, or torchrun's) number wins
    ],
)
def test_concurrent_jobs_split_the_cores(environ, jobs, cores, threads):
    assert job_threads(jobs, cores, environ).threads == threads


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_named(value):
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS={value!r}"):
        job_threads(1, 2, {"OMP_NUM_THREADS": value})


def test_the_number_of_concurrent_jobs_comes_from_the_launcher_or_torchrun(monkeypatch):
    monkeypatch.setattr("grace.distributed.threads.available_cores", lambda: 8)
    assert launcher_jobs(None, {}) == 1
    assert launcher_jobs({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, {}) == 1
    assert launcher_jobs({"_target_": JOBLIB, "n_jobs": 3}, {}) == 3
    assert launcher_jobs({"_target_": JOBLIB, "n_jobs": -1}, {}) == 8  # joblib: -1 is one job per core
    assert launcher_jobs({"_target_": JOBLIB, "n_jobs": -2}, {}) == 7
    assert launcher_jobs(None, {"LOCAL_WORLD_SIZE": "4"}) == 4  # torchrun's ranks on this machine


def test_applying_the_plan_sets_torch_only_where_no_launcher_did(monkeypatch):
    import torch

    from grace.distributed.threads import apply_job_threads

    before = torch.get_num_threads()
    monkeypatch.setattr("grace.distributed.threads.available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        assert apply_job_threads(1).reason == "one job: torch's default" and torch.get_num_threads() == 2
        assert apply_job_threads(2).threads == 1 and torch.get_num_threads() == 1  # two jobs split two cores
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_job_threads(2).reason == "OMP_NUM_THREADS=2" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
