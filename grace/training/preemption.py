"""Preemption: a signal before the kill -> finish the step, write a checkpoint, exit to be requeued, continue exactly.

Clusters warn a job before they stop it: SLURM sends SIGTERM on preemption (then SIGKILL after its grace
time) and, with ``--signal=USR1@90``, SIGUSR1 before the time limit; torchrun's agent sends SIGTERM to its
workers; submitit (``hydra/launcher=slurm_gpu``) asks SLURM for its own signal, ``$SUBMITIT_PREEMPT_SIGNAL``
(SIGUSR2 by default), 90 s before the limit. While a run trains, ``Preemption`` catches SIGTERM, SIGUSR1 and,
under submitit, submitit's signal, and only records it (a handler that wrote files in the middle of a
backward pass would save a half-updated model). After each step the trainer asks ``requested()``, on which
every rank agrees (one rank's signal stops all of them after the same step), writes a checkpoint, leaves
``preempted.json`` in the run directory and calls ``hand_over``:

* under submitit: submitit's own handler for its signal, which dumps the job for a requeue (the launcher's
  ``checkpoint()`` resubmits the same overrides), runs ``scontrol requeue`` and exits (status 255,
  ``sys.exit(-1)``), as submitit's checkpointing protocol expects;
* otherwise ``Preempted``: ``grace-train`` exits with status 75 (``EX_TEMPFAIL`` of sysexits.h: try again), which
  a job script or torchrun's ``--max-restarts`` can act on.

The requeued job runs the same command. A run directory that holds ``preempted.json`` continues from its
newest intact checkpoint even under ``trainer.resume=none`` (``resume_setting``): the requeue cannot add
``trainer.resume=auto`` to the command line. The checkpoint holds the RNG states and the data position, so
the continued run equals the uninterrupted one (tested on one process and on two gloo ranks).
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from grace.distributed.ranks import max_over_ranks

PREEMPTED_FILE = "preempted.json"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure, the same command will continue
SUBMITIT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


class Preempted(Exception):
    """The run was asked to stop (a signal), wrote a checkpoint after its current step and stopped; the same
    command continues it. One message argument, so it pickles across process boundaries."""


def under_submitit() -> bool:
    """A job that submitit started (it sets ``SUBMITIT_EXECUTOR`` in the job's environment)."""
    return "SUBMITIT_EXECUTOR" in os.environ


def caught_signals() -> list[signal.Signals]:
    """SIGTERM and SIGUSR1, and under submitit its preemption signal (``$SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    caught = [signal.SIGTERM, signal.SIGUSR1]
    if under_submitit():
        extra = getattr(signal, "SIG" + os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2"), None)
        if extra is not None and extra not in caught:
            caught.append(extra)
    return caught


class Preemption:
    """Records the signals that ask a run to stop while it trains; use as a context manager around the loop
    (the previous handlers come back after it). Outside the main thread signals cannot be caught and it
    does nothing."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for number in caught_signals():
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: the default action (a kill) now, as without us
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.received = signal.Signals(number)

    def requested(self) -> bool:
        """Whether any rank received a stop signal (a collective: every rank calls it after every step)."""
        return bool(max_over_ranks(float(self.received is not None)))

    def hand_over(self, output_dir: Path, step: int, checkpoint: Path, is_main: bool) -> None:
        """After the checkpoint of ``step``: mark the run directory and exit as the launcher expects (see the
        module docstring). Raises ``Preempted`` unless submitit's handler exits first."""
        name = self.received.name if self.received is not None else "another rank's signal"
        if is_main:
            marker = {"step": step, "signal": name, "checkpoint": str(checkpoint)}
            (output_dir / PREEMPTED_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        submitit_signal = getattr(signal, "SIG" + os.environ.get(SUBMITIT_SIGNAL_ENV, "USR2"), None)
        previous = self._previous.get(submitit_signal) if under_submitit() else None
        self.__exit__()
        if callable(previous):  # submitit's checkpoint_and_try_requeue: requeue, then sys.exit(-1)
            previous(int(submitit_signal), None)
        raise Preempted(
            f"stopped by {name} after step {step}, with checkpoint {checkpoint}: run the same command to continue "
            f"(exit status {EXIT_PREEMPTED})"
        )


def resume_setting(resume: str, output_dir: Path) -> str:
    """``trainer.resume``, except that a run directory left by a preempted run continues (``auto``)."""
    if resume == "none" and (output_dir / PREEMPTED_FILE).is_file():
        return "auto"
    return resume


def clear_marker(output_dir: Path) -> None:
    """Once a preempted run has continued, its marker goes (a later fresh start must not resume by mistake)."""
    (output_dir / PREEMPTED_FILE).unlink(missing_ok=True)
