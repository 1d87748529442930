"""Non-finite values (NaN, +inf, -inf): located by row or by tensor name, so an error can name them.

A NaN spreads silently: one reward of NaN makes its group's mean NaN, every advantage of the group NaN, the
loss and then every weight NaN. The stages check their own output where a NaN would first appear (a reward
component's value, an update's loss and gradient, the weights a checkpoint writes, the embeddings an
encoder returns) and raise a ``NonFiniteError`` subclass whose message names what, where and when.
"""
from __future__ import annotations

from typing import Iterable

import torch

from grace.numerics.errors import NonFiniteError

__all__ = ["NonFiniteError", "describe_values", "first_nonfinite_tensors", "nonfinite_rows"]


def nonfinite_rows(values: torch.Tensor) -> list[int]:
    """Indices along the first axis of the rows of ``values`` ([N] or [N, ...]) holding a NaN or an infinity."""
    bad = ~torch.isfinite(values.detach())
    if bad.dim() > 1:
        bad = bad.flatten(1).any(dim=1)
    return torch.nonzero(bad).flatten().tolist()


def first_nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> tuple[list[str], int]:
    """(up to ``limit`` names of tensors holding a NaN or an infinity, how many such tensors in all).

    One pass over ``named`` (``model.named_parameters()``, a state dict's items), each tensor reduced on its
    own device: reading the weights once costs far less than the step that wrote them.
    """
    names, count = [], 0
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            count += 1
            if len(names) < limit:
                names.append(name)
    return names, count


def describe_values(values: torch.Tensor, rows: list[int], limit: int = 3) -> str:
    """``"row 3 (nan), row 7 (inf)"``: the first ``limit`` of ``rows`` with their values, and how many more."""
    shown = ", ".join(f"row {row} ({float(values[row])})" for row in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
