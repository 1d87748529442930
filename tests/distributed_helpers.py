"""Running a function on N processes joined by gloo, as torchrun would start them, for CPU tests.

Each process gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
code under test joins the group through ``grace.distributed.ranks.init_from_env`` exactly as under torchrun. A
run that does not finish in time (a collective waiting for a rank that never comes) is killed and fails
the test instead of hanging it.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(fn: Callable, *args, world: int = 2, timeout: float = 600.0) -> None:
    """``fn(*args)`` on ``world`` processes; raises what a rank raised, or TimeoutError if they hang."""
    port = _free_port()
    context = mp.start_processes(_entry, args=(fn, args, world, port), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} ranks did not finish within {timeout:.0f} s: a collective is waiting for a rank")


def _entry(rank: int, fn: Callable, args: tuple, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)  # two ranks share the CI machine's two cores
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eos_bias(model: torch.nn.Module, eos_id: int, bias: float) -> None:
    """Raise the EOS logit of every LM-head output by ``bias`` (a forward hook): a random model that never
    ends its rationales then ends them after ~exp(-bias) x vocabulary tokens, or at once for a large bias."""

    def hook(module, inputs, output):
        output[..., eos_id] += bias
        return output

    model.get_output_embeddings().register_forward_hook(hook)
