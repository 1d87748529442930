"""Faults injected into tiny runs: reward components that fail on one rollout, non-finite gradients on chosen
updates, a preemption signal sent in the middle of a step. Importable by dotted path (``fault_helpers.*``) as a
reward component's ``_target_``: tests/ is on the path of the tests and of the CLI runs they start."""
from __future__ import annotations

import math
import os
import signal

import torch

from grace.rewards.types import RewardInputs


def judge_fails_on_one_rollout(inputs: RewardInputs, at_step: int = 2, row: int = 1, value: float = math.nan) -> torch.Tensor:
    """[R] zeros, except ``value`` for rollout ``row`` from step ``at_step`` on: a judge that failed once."""
    out = torch.zeros(len(inputs))
    if inputs.step >= at_step:
        out[row] = value
    return out


class PoisonedUpdates:
    """Wraps ``apply_update``: before the updates numbered in ``poisoned`` (counted from 1), one gradient is set
    to ``value``, as a bf16 overflow or a bad batch would leave it."""

    def __init__(self, apply_update, poisoned: set[int], value: float = math.nan):
        self.apply_update, self.poisoned, self.value, self.calls = apply_update, poisoned, value, 0

    def __call__(self, model, optimizer, scheduler, grad_clip, loss=None):
        self.calls += 1
        if self.calls in self.poisoned:
            grads = [p for p in model.parameters() if p.grad is not None]
            grads[0].grad.view(-1)[0] = self.value
        return self.apply_update(model, optimizer, scheduler, grad_clip, loss=loss)


class SignalDuringStep:
    """Wraps an objective's ``step``: sends ``signum`` to this process in the middle of step ``at_step`` (after the
    rollout, before the update), on the ranks in ``ranks`` (None: every rank)."""

    def __init__(self, step_function, at_step: int, signum: int = signal.SIGTERM, ranks: set[int] | None = None):
        self.step_function, self.at_step, self.signum, self.ranks = step_function, at_step, signum, ranks

    def __call__(self, objective, step, examples, optimizer, scheduler):
        rank = int(os.environ.get("RANK", "0"))
        if step == self.at_step and (self.ranks is None or rank in self.ranks):
            os.kill(os.getpid(), self.signum)  # the handler only records it: the step goes on
        return self.step_function(objective, step, examples, optimizer, scheduler)
