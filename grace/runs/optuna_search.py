"""The Optuna search loop of ``hparams_search=grace_optuna``: a failed trial is recorded and the search goes on.

Hydra's Optuna sweeper 1.3.0 (``hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl``, whose loop this
follows) stops a search at the first failed trial of a batch unless ``max_failure_rate`` is 1, because it
compares the failures *of one batch* with the rate: with one trial per batch (``n_jobs: 1``) any failure is a
rate of 1. A search over ``rollout.num_samples`` in {1, 2, 4} then ends at the refused ``num_samples=1`` trial,
later trials never run and no ``optimization_results.yaml`` is written. Here:

* ``max_failure_rate`` is the fraction of the invocation's ``n_trials`` that may fail
  (``floor(max_failure_rate * n_trials)`` failures are tolerated; one more stops the search with the list
  of failed trials). Each failed trial is told to Optuna as FAIL, so the sampler avoids its region.
* Before any trial is asked for, the search space is compared with the one the stored study was run with;
  a changed categorical choice, or a parameter that changed kind (float / int / log / categorical), stops
  with one line naming the parameter and what to do, instead of Optuna's
  ``CategoricalDistribution does not support dynamic value space`` from inside the first trial.
* A trial asked for is always told: if launching or configuring a batch fails, its trials are told FAIL,
  so no trial stays RUNNING in the study forever.
* ``optimization_results.yaml`` is written at the end of every search that ran a trial, with the best
  trial (when one completed) and every failed trial's number, overrides and error.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.trial import TrialState

from grace.runs.search_plugin import SearchFailed, SearchSpaceChanged

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"


@dataclass(frozen=True)
class FailedTrial:
    number: int  # Optuna's trial number in the study
    overrides: tuple[str, ...]  # the sampled values, as Hydra overrides
    error: str  # "TypeName: message"

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "overrides": list(self.overrides), "error": self.error}


def tolerated_failures(max_failure_rate: float, n_trials: int) -> int:
    """Failed trials a search of ``n_trials`` survives: ``floor(max_failure_rate * n_trials)``.
    Raises ``ValueError`` for a rate outside [0, 1]."""
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: expected a fraction between 0 and 1")
    return math.floor(max_failure_rate * n_trials + 1e-9)


def check_search_space(study: optuna.Study | None, distributions: dict[str, BaseDistribution], storage: str) -> None:
    """Raise ``SearchSpaceChanged`` naming the first parameter whose space ``study``'s earlier trials cannot
    share (Optuna's ``check_distribution_compatibility``: same kind, and the same choices for a categorical)."""
    if study is None:
        return
    recorded: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        recorded.update(trial.distributions)  # later trials win: the space the study last ran with
    for name, new in sorted(distributions.items()):
        old = recorded.get(name)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError:
            raise SearchSpaceChanged(
                f"search parameter {name!r} was {_describe(old)} in study {study.study_name!r} ({storage}) and is "
                f"{_describe(new)} now, which Optuna cannot mix in one study: start a new study "
                f"(hydra.sweeper.study_name={study.study_name}_2) or keep the old space"
            ) from None


def _describe(distribution: BaseDistribution) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in distribution._asdict().items())
    return f"{type(distribution).__name__}({args})"


def _error_text(error: object) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {' '.join(str(error).split())}"
    return f"the job failed ({error!r})"


class GraceOptunaSweeperImpl(OptunaSweeperImpl):
    """``OptunaSweeperImpl`` with the failure, search-space and zombie-trial handling of the module docstring."""

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        allowed = tolerated_failures(self.max_failure_rate, self.n_trials)
        distributions, fixed = self._search_space(arguments)
        directions = self._get_directions()
        storage = str(self.storage) if self.storage is not None else "in memory"
        check_search_space(self._stored_study(), distributions, storage)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=self.sampler, directions=directions, load_if_exists=True
        )
        log.info("Study %s (%s), sampler %s, directions %s", study.study_name, storage, type(self.sampler).__name__, directions)
        failed: list[FailedTrial] = []
        to_go = self.n_trials
        while to_go > 0:
            size = min(to_go, self.n_jobs)
            failed += self._run_batch(study, size, distributions, fixed, len(directions))
            to_go -= size
            if len(failed) > allowed:
                self._write_results(study, directions, failed)
                raise SearchFailed(
                    f"{len(failed)} of {self.n_trials - to_go} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate} of {self.n_trials} allows ({allowed}): "
                    + _listed(failed)
                )
        if not self._write_results(study, directions, failed):
            raise SearchFailed(f"no trial of study {study.study_name!r} completed: " + _listed(failed))

    def _search_space(self, arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        """The distributions to sample and the fixed values, from ``hydra.sweeper.params`` and the command line."""
        self._process_searchspace_config()
        params = self._parse_sweeper_params_config() + list(arguments)
        from_overrides, fixed = create_params_from_overrides(params)
        distributions = dict(self.search_space_distributions or {})
        distributions.update(from_overrides)
        for name in fixed:  # before the grid is made: a dimension fixed on the command line is not searched
            distributions.pop(name, None)
        if getattr(self.sampler, "func", None) is optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        return distributions, fixed

    def _stored_study(self) -> optuna.Study | None:
        if self.storage is None:
            return None
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:  # no such study yet
            return None

    def _run_batch(self, study: optuna.Study, size: int, distributions, fixed, n_objectives: int) -> list[FailedTrial]:
        """Launch ``size`` trials; every trial asked for is told COMPLETE or FAIL, whatever is raised."""
        trials = [study.ask() for _ in range(size)]
        told: set[int] = set()
        failed: list[FailedTrial] = []
        try:
            overrides = self._configure_trials(trials, distributions, fixed)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret, trial_overrides in zip(trials, returns, overrides):
                values, error = _values(ret, n_objectives)
                if values is None:
                    _tell(study, trial, TrialState.FAIL)
                    failed.append(FailedTrial(trial.number, tuple(trial_overrides), error))
                    log.warning("Trial %d failed: %s", trial.number, failed[-1].error)
                else:
                    _tell(study, trial, TrialState.COMPLETE, values)
                told.add(trial.number)
        finally:
            for trial in trials:
                if trial.number not in told:
                    _tell(study, trial, TrialState.FAIL)
        return failed

    def _write_results(self, study: optuna.Study, directions: list[str], failed: list[FailedTrial]) -> bool:
        """Write ``optimization_results.yaml``; whether any trial of the study has completed."""
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if complete and len(directions) < 2:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value)
            log.info("Best parameters: %s, best value: %s", best.params, best.value)
        elif complete:
            results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
        results["failed_trials"] = [f.to_dict() for f in failed]
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/{RESULTS_FILE}")
        return bool(complete)


def _values(ret: JobReturn, n_objectives: int) -> tuple[list[float] | None, str]:
    """(the trial's objective values, "") or (None, why not): the job failed, or returned something Optuna
    cannot record (not a number, NaN, the wrong count)."""
    raw = ret._return_value  # the job's exception when it failed (JobReturn.return_value would re-raise it)
    if ret.status != JobStatus.COMPLETED:
        return None, _error_text(raw)
    try:
        values = [float(raw)] if n_objectives == 1 else [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, f"the job returned {raw!r}, not {n_objectives} number(s)"
    if len(values) != n_objectives or any(math.isnan(v) for v in values):
        return None, f"the job returned {raw!r}, which Optuna cannot record"
    return values, ""


def _listed(failed: list[FailedTrial], shown: int = 3) -> str:
    """The last ``shown`` failures, one clause each (every one is in optimization_results.yaml)."""
    return "; ".join(f"trial {f.number} ({' '.join(f.overrides)}): {f.error}" for f in failed[-shown:])


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None = None) -> None:
    """Record the trial's end; the grid sampler's ``study.stop()`` once its grid is exhausted (a RuntimeError
    outside ``optimize``, raised after the state is stored) is expected."""
    try:
        study.tell(trial, state=state, values=values)
    except RuntimeError as error:
        if "`Study.stop` is supposed to be invoked" not in str(error):
            raise
