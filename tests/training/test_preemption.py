"""Preemption: SIGTERM or SIGUSR1 in the middle of a step -> the step finishes, a checkpoint is written, the run
stops (exit status 75, or submitit's requeue); the same command continues it exactly (0 difference), on one
process here and on two gloo ranks in tests/distributed/test_preemption.py."""
from __future__ import annotations

import json
import signal

import pytest
import torch
from fault_helpers import SignalDuringStep
from train_helpers import compose_config, read_metrics, without_timing

from grace.embedding.encoder import GraceEncoder
from grace.objectives.policy_gradient.step import PolicyGradient
from grace.training.checkpoint import complete_checkpoints
from grace.training.preemption import EXIT_PREEMPTED, PREEMPTED_FILE, Preempted, Preemption, caught_signals, resume_setting
from grace.training.trainer import train

SETTINGS = ["trainer.max_steps=4", "trainer.save_every=3"]  # step 2 is no regular save: the signal makes it one


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    torch.set_num_threads(1)  # as in the tests below (conftest's _threads runs after module fixtures)
    root = tmp_path_factory.mktemp("straight")
    train(compose_config(*SETTINGS), root)
    return root


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_step_checkpoints_that_step_and_the_same_command_continues_exactly(straight, tmp_path, monkeypatch, signum):
    interrupted = SignalDuringStep(PolicyGradient.step, at_step=2, signum=signum)
    monkeypatch.setattr(PolicyGradient, "step", lambda self, *args: interrupted(self, *args))
    before = signal.getsignal(signum)
    with pytest.raises(Preempted, match=f"stopped by {signal.Signals(signum).name} after step 2, with checkpoint .*step-2"):
        train(compose_config(*SETTINGS), tmp_path)
    assert signal.getsignal(signum) is before  # the run's handler is gone with the run
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2]  # step 2 finished before the stop
    assert [c.name for c in complete_checkpoints(tmp_path)] == ["step-2"]
    assert json.loads((tmp_path / PREEMPTED_FILE).read_text())["step"] == 2
    monkeypatch.undo()
    train(compose_config(*SETTINGS), tmp_path)  # the very same command (trainer.resume=none): it continues
    assert not (tmp_path / PREEMPTED_FILE).exists()
    assert without_timing(read_metrics(tmp_path)) == without_timing(read_metrics(straight))
    a, b = GraceEncoder.from_pretrained(straight).model.state_dict(), GraceEncoder.from_pretrained(tmp_path).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_a_signal_nothing_is_requested_and_the_handlers_come_back():
    previous = {number: signal.getsignal(number) for number in caught_signals()}
    with Preemption() as preemption:
        assert signal.getsignal(signal.SIGTERM) is not previous[signal.SIGTERM]
        assert not preemption.requested()
    assert {number: signal.getsignal(number) for number in caught_signals()} == previous


def test_under_submitit_its_own_signal_is_caught_too(monkeypatch):
    assert signal.SIGUSR2 not in caught_signals()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert caught_signals() == [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert caught_signals() == [signal.SIGTERM, signal.SIGUSR1]


def test_under_submitit_the_hand_over_calls_submitits_requeue_after_the_checkpoint(monkeypatch, tmp_path):
    """submitit's handler for its signal (checkpoint_and_try_requeue: requeue, then sys.exit(-1)) runs once our
    checkpoint is written, never in the middle of the step."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    calls = []

    def submitit_requeue(number, frame):
        calls.append(number)
        raise SystemExit(-1)

    old = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        preemption = Preemption().__enter__()
        signal.raise_signal(signal.SIGUSR2)
        assert calls == [] and preemption.received == signal.SIGUSR2  # only recorded while the step runs
        with pytest.raises(SystemExit):
            preemption.hand_over(tmp_path, 7, tmp_path / "step-7", is_main=True)
        assert calls == [signal.SIGUSR2]
        assert json.loads((tmp_path / PREEMPTED_FILE).read_text()) == {"step": 7, "signal": "SIGUSR2", "checkpoint": str(tmp_path / "step-7")}
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_a_preempted_run_directory_resumes_under_resume_none(tmp_path):
    assert resume_setting("none", tmp_path) == "none"
    (tmp_path / PREEMPTED_FILE).write_text("{}")
    assert resume_setting("none", tmp_path) == "auto" and resume_setting("some/step-3", tmp_path) == "some/step-3"


def test_grace_train_exits_with_75_when_preempted_and_3_on_a_non_finite_value():
    from grace.cli.train import _stopped
    from grace.numerics.errors import NonFiniteError

    for error, status in ((Preempted("stopped by SIGTERM after step 2"), EXIT_PREEMPTED), (NonFiniteError("a NaN"), 3)):
        with pytest.raises(SystemExit) as caught:
            _stopped("grace-train", error, multirun=False, finisher=None)
        assert caught.value.code == status
