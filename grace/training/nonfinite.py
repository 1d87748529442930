"""What the trainer does about non-finite values: skipped updates counted, a run of them stops the run, and
no weights that are not finite are ever trained from or saved.

``grace.objectives.optimizer.apply_update`` skips an update whose loss or gradient is not finite (the weights
stay as they were) and each objective reports how many it skipped (``StepResult.skipped_updates``, logged
as ``optim/skipped_updates``). One skipped update is noise a run survives (a bf16 overflow, one bad batch);
``trainer.max_skipped_updates`` of them in a row mean the run cannot go on, and it stops with ``Diverged``
naming its last checkpoint: every checkpoint holds finite weights, because ``save_checkpoint`` refuses others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grace.numerics.errors import NonFiniteError
from grace.objectives.optimizer import nonfinite_weights


class Diverged(NonFiniteError):
    """The run stopped on a non-finite value (a reward component's, a run of skipped updates, the weights);
    the message names the value and the run's last checkpoint. ``grace-train`` exits with status 3."""


def stopped_message(error: BaseException, step: int, last: Path | None) -> str:
    """``error``'s message with where the run stopped and what to continue from."""
    where = (
        f"its last checkpoint, {last}, holds finite weights (trainer.resume=auto continues from it)"
        if last is not None
        else "no checkpoint was written yet"
    )
    return f"{error}. The run stopped at step {step}; {where}"


@dataclass
class SkippedUpdates:
    """Skipped optimizer updates in a row, over steps: a step whose every update was skipped adds them, a step
    that applied any update ends the run of them. Kept in the checkpoint, so a resume counts on."""

    limit: int  # trainer.max_skipped_updates
    in_a_row: int = 0

    def record(self, step: int, skipped: int, updates: int) -> str | None:
        """Count one step; the reason to stop, or None."""
        self.in_a_row = self.in_a_row + skipped if skipped == updates else 0
        if self.in_a_row < self.limit:
            return None
        return (
            f"{self.in_a_row} optimizer updates in a row had a non-finite loss or gradient (the last at step {step}) and "
            f"were skipped, reaching trainer.max_skipped_updates={self.limit}: the run cannot recover on its own. Look at "
            "the last steps of metrics.jsonl (optim/skipped_updates, the rewards and losses); a lower trainer.lr, "
            "trainer.precision=fp32 or a smaller trainer.grad_clip usually helps"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_a_row = int(state.get("in_a_row", 0))


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise ``NonFiniteError`` if any weight of ``model`` (every rank's own shard under FSDP) is NaN or infinite;
    ``what`` names the model in the message ("model.source=...", "the weights to save at step 4")."""
    found = nonfinite_weights(model)  # a collective: every rank raises, none waits for the others
    if found is not None:
        names, count = found
        where = f"{count} tensors hold NaN or infinite values, first {names}" if count else "another rank's shard holds NaN or infinite values"
        raise NonFiniteError(f"{what}: {where}")


def finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without non-finite numbers: the loss of a step whose every update was skipped is NaN and
    describes no update (the weights did not move); its ``optim/skipped_updates`` says what happened."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
