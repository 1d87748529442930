"""apply_update skips an update whose loss or gradient is not finite, and otherwise equals the plain
clip_grad_norm_ + AdamW step; weights an update overflows are named."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from grace.objectives.optimizer import NonFiniteWeights, apply_update


def model_with_gradients(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model(torch.randn(5, 4)).pow(2).sum().backward()
    return model


def optimizer_and_schedule(model: torch.nn.Module, lr: float = 1e-2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1.0)


def test_a_finite_update_equals_clip_grad_norm_and_an_adamw_step():
    model = model_with_gradients()
    reference = copy.deepcopy(model)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        theirs.grad = ours.grad.clone()  # deepcopy leaves gradients behind
    optimizer, schedule = optimizer_and_schedule(model)
    reference_optimizer, _ = optimizer_and_schedule(reference)
    outcome = apply_update(model, optimizer, schedule, grad_clip=0.5)
    expected_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5))
    reference_optimizer.step()
    assert outcome.applied and outcome.grad_norm == expected_norm > 0.5  # the clip was active
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)
    assert schedule.last_epoch == 1


@pytest.mark.parametrize(
    "poison, loss",
    [(math.nan, None), (math.inf, None), (-math.inf, None), (0.0, math.nan), (0.0, math.inf)],
    ids=["nan-gradient", "inf-gradient", "minus-inf-gradient", "nan-loss", "inf-loss"],
)
def test_a_non_finite_loss_or_gradient_leaves_the_weights_and_moments_alone(poison, loss):
    model = model_with_gradients()
    optimizer, schedule = optimizer_and_schedule(model)
    apply_update(model, optimizer, schedule, grad_clip=1.0)  # one real update first: moments exist
    model(torch.randn(5, 4)).pow(2).sum().backward()
    next(model.parameters()).grad.view(-1)[0] += poison
    weights = [p.detach().clone() for p in model.parameters()]
    moments = copy.deepcopy(optimizer.state_dict()["state"])
    outcome = apply_update(model, optimizer, schedule, grad_clip=1.0, loss=loss)
    assert not outcome.applied
    assert not math.isfinite(outcome.grad_norm) or loss is not None
    assert all(torch.equal(before, after) for before, after in zip(weights, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # nothing carries over into the next update
    state = optimizer.state_dict()["state"]
    assert all(torch.equal(moments[k]["exp_avg"], state[k]["exp_avg"]) for k in moments)
    assert schedule.last_epoch == 2  # the schedule counts update slots, skipped ones too


def test_weights_an_update_overflows_are_named():
    model = model_with_gradients()
    with torch.no_grad():
        model[0].weight[0, 0] = 3e38  # near float32's largest number, which the update of lr 1e36 overflows
    optimizer, schedule = optimizer_and_schedule(model, lr=1e36)
    with pytest.raises(NonFiniteWeights, match=r"not finite after an optimizer update with finite gradients.*\['0.weight'"):
        apply_update(model, optimizer, schedule, grad_clip=1.0)
