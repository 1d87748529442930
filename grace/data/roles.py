"""The roles a text plays in a training example: query, positive, negative.

Rows of every batch (rollouts, rewards, the global batch) carry a role as a small integer; rewards group by
it, so it lives here, below everything that reads it.
"""
from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    QUERY = 0
    POSITIVE = 1
    NEGATIVE = 2
