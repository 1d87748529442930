"""What a process knows before it joins anything: whether torchrun started it, and when the run began.

Light on purpose (no torch at import): ``grace-train`` asks both before Hydra parses the command line, so
that ``--help`` and a misspelt key answer without loading torch.
"""
from __future__ import annotations

import os
from datetime import datetime

_LAUNCH_TIME: datetime | None = None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or an equivalent launcher) started several processes for this run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_time() -> datetime:
    """When the run started, by rank 0's clock, the same on every rank (computed once per process).

    Hydra names the run directory after the time (``outputs/<date>/<time>``); ranks started a second
    apart would each make their own. Call it on every rank at the same point (``grace-train`` does,
    before Hydra starts): under torchrun it is a collective.
    """
    global _LAUNCH_TIME
    if _LAUNCH_TIME is None:
        now = datetime.now()
        if launched_by_torchrun():
            from grace.distributed.ranks import broadcast  # loads torch: only when there are ranks to agree with

            now = broadcast(now)
        _LAUNCH_TIME = now
    return _LAUNCH_TIME
