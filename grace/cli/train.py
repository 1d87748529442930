"""``grace-train``: the Hydra entry point of the trainer (``python -m grace.cli.train`` works too). ``grace-sft``
(grace/cli/sft.py) runs the same job on its own primary config.

Everything Hydra-specific lives here: composing ``conf/train.yaml`` with the typed schema, naming the
job's output directory and wandb run from its overrides (flat, bounded names: ``grace.runs.job_names``), and making
sure a multirun job that fails still closes its wandb run (the trainer does that in a ``finally``)
without taking the sweep down.

A user's mistake (a setting, the data, a model that cannot be loaded) ends a single run with one line
``grace-train: ...`` and exit code 2. Under multirun the same line is printed and the error re-raised:
Hydra records the job as failed, runs the remaining jobs and reports the failure at the end (a
SystemExit would escape Hydra's per-job handling and stop the sweep).

The task function returns the job's sweep value (``sweep.*``, grace/runs/sweep_value.py) for sweepers such as
Optuna; after the run it writes the report (grace/runs/report.py) and prints a one-screen summary.

Under ``torchrun`` every rank runs this entry point: ``main`` joins the process group before Hydra
starts, so that all ranks agree on one run directory (its time stamp is rank 0's, ``${grace.now:...}``
in ``conf/train.yaml``), and the other ranks write no Hydra files of their own there (``.hydra/``) and
log to ``train_rank<N>.log``, as Lightning launches its DDP processes. Only rank 0 reports and summarises.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grace.config import ConfigError, TrainConfig, register_configs
from grace.data.errors import DataError
from grace.distributed.launch import launch_time, launched_by_torchrun
from grace.runs.console import quiet_third_party
from grace.runs.job_names import job_dirname, job_label, record_job, register_resolver
from grace.runs.portable_errors import portable
from grace.runs.search_plugin import register_sweeper
from grace.runs.sweep_value import register_resolvers

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
register_configs()
register_resolver()  # hydra.sweep.subdir: ${grace.job_dir:...}
register_resolvers()  # ${sqlite_storage:...} in conf/hparams_search/
# hydra.run.dir and hydra.sweep.dir: Hydra's ${now:...}, but the same on every torchrun rank.
OmegaConf.register_new_resolver("grace.now", lambda pattern: launch_time().strftime(pattern), replace=True)


def _job_identity(cfg: TrainConfig) -> tuple[Path, str, str | None]:
    """(output directory, run name, run group) for this Hydra job."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.trainer.output_dir is None:
        output_dir = Path(hydra_cfg.runtime.output_dir)
    elif multirun:  # an explicit directory shared by a sweep: one sub-directory per job
        output_dir = Path(cfg.trainer.output_dir) / job_dirname(hydra_cfg.job.num, hydra_cfg.job.override_dirname)
    else:
        output_dir = Path(cfg.trainer.output_dir)
    # The sweep directory's last two parts, "2025-01-31/14-02-11" by default: the time alone repeats daily.
    group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:]) if multirun else None
    return output_dir, job_label(hydra_cfg.job.override_dirname), group


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(dict_cfg: DictConfig) -> float | None:
    return run_job(dict_cfg, "grace-train")


def run_job(dict_cfg: DictConfig, program: str) -> float | None:
    """One training job of ``program`` (grace-train, grace-sft); returns the sweep value (``sweep.metric``,
    see grace/runs/sweep_value.py) for a sweeper such as Optuna."""
    quiet_third_party()  # here, not in main(): joblib and submitit jobs start in this function
    # Heavy imports (torch, transformers) after Hydra has parsed the command line: --help and a misspelt
    # key answer without them.
    from grace.distributed.ranks import is_main
    from grace.distributed.threads import apply_job_threads, launcher_jobs
    from grace.numerics.errors import NonFiniteError
    from grace.rewards import ComponentError
    from grace.runs.epilogue import Finisher, check_final_eval_tasks
    from grace.training.preemption import Preempted
    from grace.training.trainer import train

    cfg: TrainConfig = OmegaConf.to_object(dict_cfg)
    output_dir, name, group = _job_identity(cfg)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # Jobs run at once (joblib's n_jobs, torchrun's ranks) split the cores instead of each taking all.
    threads = apply_job_threads(launcher_jobs(HydraConfig.get().launcher if multirun else None))
    logging.getLogger(__name__).info("torch threads: %d (%s)", threads.threads, threads.reason)
    finisher = Finisher(cfg, sweeping=multirun, program=program)
    try:
        if multirun and is_main():
            record_job(output_dir, HydraConfig.get())  # the full overrides: the directory name may be cut
        check_final_eval_tasks(cfg)  # an unknown task or unreachable data must not wait for the end of training
        result = train(cfg, output_dir, run_name=name, run_group=group, after_training=finisher.after_training)
    except (NonFiniteError, Preempted) as error:  # a NaN named where it appeared; a signal, after a checkpoint
        return _stopped(program, error, multirun, finisher)
    except (ConfigError, ComponentError, DataError, OSError) as error:  # a reward component's bad output: at the first step
        kind = "invalid configuration: " if isinstance(error, (ConfigError, ComponentError)) else ""
        message = " ".join(str(error).split())  # one line: transformers' messages span several
        if multirun:
            job = HydraConfig.get().job  # named by its overrides in full: the run name may be cut
            print(f"{program}: job {job.num} ({job.override_dirname}) failed: {kind}{message}", file=sys.stderr)
            raise portable(error)  # joblib and submitit pickle it back to the sweep
        print(f"{program}: {kind}{message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        # A run that went NaN and then crashed (e.g. sampling from NaN logits) is a bad trial, not a broken
        # sweep: the sweeper gets the worst value. Any other error is a bug and fails the job.
        value = finisher.diverged_value(output_dir) if multirun else None
        if value is None:
            if multirun:
                raise portable(error)  # an error that cannot be pickled would break a joblib pool's other jobs
            raise
        job = HydraConfig.get().job.num
        print(f"{program}: job {job} ({name}) diverged ({finisher.divergence}), then failed; sweep value {value}", file=sys.stderr)
        return value
    if not is_main():  # rank 0 writes the report and the summary
        return None
    print(finisher.summary(finisher.report(result.output_dir)))
    return finisher.value


def _stopped(program: str, error: Exception, multirun: bool, finisher) -> float:
    """A run stopped by a non-finite value (exit status 3) or a preemption signal (75, after its checkpoint).

    Under a sweep a non-finite run is a bad trial, not a broken search: the sweeper gets the worst value
    (``sweep.diverged_value``); a preempted job fails (its requeue, or the same command, continues it)."""
    from grace.numerics.errors import EXIT_NON_FINITE
    from grace.runs.sweep_value import worst_value
    from grace.training.preemption import EXIT_PREEMPTED, Preempted

    preempted = isinstance(error, Preempted)
    message = f"{'preempted' if preempted else 'non-finite value'}: {' '.join(str(error).split())}"
    if not multirun:
        print(f"{program}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED if preempted else EXIT_NON_FINITE) from None
    job = HydraConfig.get().job
    if preempted:
        print(f"{program}: job {job.num} ({job.override_dirname}) {message}", file=sys.stderr)
        raise error
    value = worst_value(finisher.cfg.sweep.direction, finisher.cfg.sweep.diverged_value)
    print(f"{program}: job {job.num} ({job.override_dirname}) stopped on a {message}; sweep value {value}", file=sys.stderr)
    return value


def join_ranks() -> None:
    """Before Hydra starts: under torchrun join the process group (a single process: nothing) and agree on
    the run directory's time stamp; rank 0 alone records Hydra's config, each rank logs to its own file."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not launched_by_torchrun():
        return
    from grace.distributed.ranks import init_from_env  # loads torch: only when there are ranks to join

    layout = init_from_env()
    launch_time()
    if layout.rank > 0:
        sys.argv += ["hydra.output_subdir=null", f"hydra.job.name=train_rank{layout.rank}"]


def main() -> None:
    join_ranks()
    register_sweeper()  # hparams_search=grace_optuna's sweeper (grace/runs/search_plugin.py)
    _main()


if __name__ == "__main__":
    main()
