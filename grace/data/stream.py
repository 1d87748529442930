"""An endless, seeded stream of training batches whose whole state is one integer.

Examples are visited epoch by epoch, each epoch in its own seeded permutation. The position (how many
examples have been consumed) is all a checkpoint needs to store: the batch at a position is a pure
function of (examples, seed, position), so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import torch

T = TypeVar("T")


class ExampleStream(Generic[T]):
    def __init__(self, examples: Sequence[T], batch_size: int, *, seed: int, shuffle: bool = True):
        if not examples:
            raise ValueError("no training examples")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._orders = {epoch: torch.randperm(len(self.examples), generator=generator).tolist()}
            else:
                self._orders = {epoch: list(range(len(self.examples)))}
        return self._orders[epoch]

    def batch_at(self, position: int) -> list[T]:
        """The ``batch_size`` examples starting at ``position`` (crossing into the next epoch if needed)."""
        n = len(self.examples)
        return [self.examples[self._order(p // n)[p % n]] for p in range(position, position + self.batch_size)]
