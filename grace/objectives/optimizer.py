"""The optimizer side shared by every objective: learning-rate schedule, one clipped optimizer update that
is skipped when its loss or gradient is not finite.

The schedule counts optimizer updates, not steps: a GRACE step takes ``ppo_epochs x mini-batches``
updates, a contrastive step one per mini-batch; each objective says how many (``updates_per_step``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from grace.config import TrainConfig
from grace.distributed.ranks import max_over_ranks
from grace.numerics.finite import NonFiniteError, first_nonfinite_tensors


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_step: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate multiplier per optimizer update (not per step: a step may hold several updates)."""
    total = max(1, cfg.trainer.max_steps * updates_per_step)
    warmup = cfg.trainer.warmup_steps if cfg.trainer.schedule != "constant" else 0

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if cfg.trainer.schedule == "cosine":
            progress = (update - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class UpdateOutcome:
    """What one optimizer update did."""

    grad_norm: float  # global L2 norm of the gradients before clipping; NaN or inf when the update was skipped
    applied: bool  # False: the loss or the gradient was not finite, and the weights were left as they were


class NonFiniteWeights(NonFiniteError):
    """An update with finite gradients left NaN or infinite weights (an overflow, e.g. a learning rate far
    too large); the message names the tensors."""


def apply_update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, grad_clip: float, loss: float | None = None
) -> UpdateOutcome:
    """Clip the accumulated gradients to ``grad_clip`` (global L2 norm), step the optimizer and the schedule.

    A non-finite ``loss`` (the update's summed loss, when the caller has it) or gradient norm skips the
    optimizer step: clipping would spread the NaN to every gradient and AdamW to every weight and moment
    (PyTorch's ``clip_grad_norm_`` does not stop on it; ``GradScaler`` skips such steps the same way in mixed
    precision). Every rank agrees on the skip, so the replicas stay equal. The schedule still advances: it
    counts update slots, as with an update whose rows were all skipped (no gradients at all: AdamW's step is a
    no-op). Weights that come out of an applied update non-finite raise ``NonFiniteWeights``.
    """
    # Clipped first, as before: with a non-finite norm the clip spreads it to every gradient, which are then dropped.
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    finite = math.isfinite(grad_norm) and (loss is None or math.isfinite(loss))
    if bool(max_over_ranks(float(not finite))):  # one rank's NaN loss is every rank's skip
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return UpdateOutcome(grad_norm if not finite else math.nan, applied=False)
    optimizer.step()
    scheduler.step()
    check_weights(model)
    return UpdateOutcome(grad_norm, applied=True)


def nonfinite_weights(model: torch.nn.Module, *, trainable_only: bool = False) -> tuple[list[str], int] | None:
    """None when every weight of ``model`` is finite on every rank; else (the first names, how many tensors) of
    this rank's non-finite ones (0 when only another rank's hold some). A collective: every rank calls it.
    Under FSDP each rank reads its own shard (``to_local``)."""
    named = (
        (name, p.to_local() if hasattr(p, "to_local") else p)
        for name, p in model.named_parameters()
        if p.requires_grad or not trainable_only
    )
    names, count = first_nonfinite_tensors(named)
    return (names, count) if bool(max_over_ranks(float(count))) else None


def check_weights(model: torch.nn.Module) -> None:
    """Raise ``NonFiniteWeights`` naming the first tensors if any trained parameter holds NaN or an infinity."""
    found = nonfinite_weights(model, trainable_only=True)
    if found is not None:
        names, count = found
        where = f"{count} tensors, first {names}" if count else "tensors of another rank's shard"
        raise NonFiniteWeights(
            f"the weights are not finite after an optimizer update with finite gradients ({where}): an overflow, "
            "e.g. a learning rate far too large (trainer.lr) or float16 weights (model.dtype)"
        )


def mean_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR, first_update: int, count: int) -> float:
    """Mean rate of optimizer updates ``first_update .. first_update + count - 1``: LambdaLR's base rate
    times its factor, which is what ``scheduler.get_last_lr()`` showed before each of those updates."""
    base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
    return sum(base * factor(update) for update in range(first_update, first_update + count)) / max(count, 1)
