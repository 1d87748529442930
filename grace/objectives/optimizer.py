"""The optimizer side shared by every objective: learning-rate schedule, one clipped optimizer update.

The schedule counts optimizer updates, not steps: a GRACE step takes ``ppo_epochs x mini-batches``
updates, a contrastive step one per mini-batch; each objective says how many (``updates_per_step``).
"""
from __future__ import annotations

import math

import torch

from grace.config import TrainConfig


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


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, grad_clip: float) -> float:
    """Clip the accumulated gradients to ``grad_clip`` (global L2 norm), step the optimizer and the schedule.

    Returns the norm before clipping. With no gradients at all (an update whose rows were all skipped)
    AdamW's step is a no-op, but the schedule still advances: it counts update slots, not non-empty updates.
    """
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    scheduler.step()
    return grad_norm


def mean_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR, first_update: int, count: int) -> float:
    """Mean rate of optimizer updates ``first_update .. first_update + count - 1``: LambdaLR's base rate
    times its factor, which is what ``scheduler.get_last_lr()`` showed before each of those updates."""
    base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
    return sum(base * factor(update) for update in range(first_update, first_update + count)) / max(count, 1)
