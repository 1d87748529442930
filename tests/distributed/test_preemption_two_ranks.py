"""Preemption on two gloo ranks: a signal that reaches one rank only, in the middle of a step, stops both after
that step with one checkpoint; the same command continues, equal to the uninterrupted two-rank run (0 difference)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from distributed_helpers import run_ranks
from fault_helpers import SignalDuringStep
from safetensors.torch import load_file
from train_helpers import compose_config, read_metrics, without_timing

SETTINGS = ["trainer.max_steps=3", "trainer.save_every=3"]


def _on_two_ranks(root: Path) -> None:
    from grace.objectives.policy_gradient.step import PolicyGradient
    from grace.training.preemption import Preempted
    from grace.training.trainer import train

    rank = int(os.environ["RANK"])
    train(compose_config(*SETTINGS), root / "straight")
    original = PolicyGradient.step
    interrupted = SignalDuringStep(original, at_step=2, signum=signal.SIGUSR1, ranks={1})  # rank 1's signal alone
    PolicyGradient.step = lambda self, *args: interrupted(self, *args)
    try:
        train(compose_config(*SETTINGS), root / "split")
    except Preempted as error:
        (root / f"preempted-rank{rank}.txt").write_text(str(error))
    finally:
        PolicyGradient.step = original
    train(compose_config(*SETTINGS), root / "split")  # the requeued job: the same command


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempted_ranks")
    run_ranks(_on_two_ranks, root, timeout=900)
    return root


def test_every_rank_stops_after_the_signalled_step(runs):
    for rank in (0, 1):  # rank 0 got no signal, yet stopped with rank 1 after the same step
        assert "after step 2, with checkpoint" in (runs / f"preempted-rank{rank}.txt").read_text()
    assert "SIGUSR1" in (runs / "preempted-rank1.txt").read_text()
    first_line = (runs / "split" / "configs" / "start-2.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# start 2 of this run, resumed from") and first_line.endswith("step-2")
    assert not (runs / "split" / "preempted.json").exists()  # the continued run removed its marker


def test_the_continued_run_equals_the_uninterrupted_one_on_two_ranks(runs):
    assert without_timing(read_metrics(runs / "split")) == without_timing(read_metrics(runs / "straight"))
    a = load_file(runs / "straight" / "checkpoints" / "step-3" / "model.safetensors")
    b = load_file(runs / "split" / "checkpoints" / "step-3" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
