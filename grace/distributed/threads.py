"""Threads on a shared machine: OpenMP's wait policy and how many threads one job may use.

Light on purpose (no torch at import): ``grace/__init__.py`` calls ``default_wait_policy`` before anything
can load torch, because OpenMP (libgomp, which torch's CPU build links) reads ``OMP_WAIT_POLICY`` once, when
the library loads; set later it changes nothing.

Why passive: an OpenMP thread that finishes its share of a parallel region spins, by default, for a while
before it sleeps, so that the next region starts without a wake-up. On cores of its own that is a small
gain; when another job shares the cores, the spinning threads take the time slices the working threads
(theirs and the other job's) need, and every region waits for a thread that is not running. The GRACE
rollout, thousands of small decode-step regions, suffers most: on 2 shared cores the first step of the
quality study's setting took 300 s (196 s in the rollout) with the default policy and 65 s with
``OMP_WAIT_POLICY=PASSIVE`` (GNU libgomp manual, "OMP_WAIT_POLICY"; measured in experiments/contention/).

Threads per job: several jobs on one machine should split its cores, not each take all of them.
joblib's loky workers (``hydra/launcher=joblib``) get ``OMP_NUM_THREADS = cores // n_jobs`` from joblib, and
torchrun gives every rank ``OMP_NUM_THREADS=1`` unless one is set; ``job_threads`` honours those and splits
the cores itself where no launcher set a number.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

WAIT_POLICY = "OMP_WAIT_POLICY"
NUM_THREADS = "OMP_NUM_THREADS"
PASSIVE = "PASSIVE"


def default_wait_policy(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy; True when it was set here.

    Effective only before torch (its libgomp) is loaded in this process, and inherited by every process
    started afterwards (joblib workers, submitit jobs, torchrun ranks started from Python)."""
    if environ.get(WAIT_POLICY):
        return False
    environ[WAIT_POLICY] = PASSIVE
    return True


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM allocation or ``taskset``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # intra-op threads for this job (torch.set_num_threads)
    reason: str  # where the number came from, for the log


def job_threads(jobs: int, cores: int, environ: MutableMapping[str, str] = os.environ) -> ThreadPlan:
    """How many threads one of ``jobs`` jobs running at once on ``cores`` cores uses.

    ``OMP_NUM_THREADS``, when set (by the user, by joblib for its workers, by torchrun for its ranks), wins;
    otherwise ``cores // jobs``, at least 1. Raises ``ValueError`` for a ``jobs`` or ``cores`` below 1 and
    for an ``OMP_NUM_THREADS`` that is not a positive integer (naming it)."""
    if jobs < 1 or cores < 1:
        raise ValueError(f"jobs ({jobs}) and cores ({cores}) must be at least 1")
    given = environ.get(NUM_THREADS)
    if given:
        if not given.strip().isdigit() or int(given) < 1:
            raise ValueError(f"{NUM_THREADS}={given!r}: expected a positive integer (threads per process)")
        return ThreadPlan(int(given), f"{NUM_THREADS}={given}")
    return ThreadPlan(max(1, cores // jobs), f"{cores} cores / {jobs} concurrent jobs")


def launcher_jobs(launcher: object, environ: MutableMapping[str, str] = os.environ) -> int:
    """How many jobs share this machine: ``LOCAL_WORLD_SIZE`` ranks under torchrun, ``n_jobs`` of a joblib
    launcher (Hydra's ``hydra.launcher``; -1 means one per core), else 1."""
    local = int(environ.get("LOCAL_WORLD_SIZE", "1"))
    n_jobs = 1
    if launcher is not None and "joblib" in str(_get(launcher, "_target_", "")):
        n_jobs = int(_get(launcher, "n_jobs", 1) or 1)
        if n_jobs < 0:  # joblib's convention: -1 is every core, -2 every core but one, ...
            n_jobs = max(1, available_cores() + 1 + n_jobs)
    return max(1, local, n_jobs)


def _get(config: object, key: str, default: object) -> object:
    getter = getattr(config, "get", None)
    return getter(key, default) if callable(getter) else getattr(config, key, default)


def apply_job_threads(jobs: int) -> ThreadPlan:
    """Set torch's intra-op threads for one of ``jobs`` concurrent jobs (``job_threads``) and say so; loads
    torch. torch has read a set ``OMP_NUM_THREADS`` itself, and a job alone keeps torch's default (so a
    single run computes as it always did: the thread count can change the order of float sums)."""
    import torch

    plan = job_threads(jobs, available_cores())
    if os.environ.get(NUM_THREADS) or jobs == 1:
        return ThreadPlan(torch.get_num_threads(), plan.reason if os.environ.get(NUM_THREADS) else "one job: torch's default")
    torch.set_num_threads(plan.threads)
    return plan
