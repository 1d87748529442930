"""Ranks: the only module that knows how many processes share a run and which one this is.

``grace-train`` launched by ``torchrun --nproc_per_node=N`` (or ``python -m torch.distributed.run``) runs
N copies of itself; torchrun tells each one its place through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). ``init_from_env`` joins them into one process group
(NCCL for CUDA tensors, gloo for CPU tensors). Every function below is the identity, or trivially true, in
a single process, so the code that calls them reads the same for one process and for many:

* ``local_examples``: which examples of the global batch this rank works on;
* ``gather_rows``: every rank's rows of a small tensor (pooled embeddings [R, H], labels [R]), in the
  order one process would hold them, without gradient; ranks may hold different numbers of rows
  (padded to the largest, then trimmed);
* ``sum_over_ranks`` / ``max_over_ranks`` / ``reduce_sums``: metric and count reductions;
* ``is_main``, ``on_main``, ``barrier``, ``launch_time``: rank 0 writes the run's files, every rank agrees
  on the run directory's time stamp;
* ``seed_step``: each rank's random stream for a step.

torch.distributed keeps the process group as process-wide state, so this module reads it from there
rather than passing a handle through every call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from grace.distributed.launch import launched_by_torchrun
from grace.generation.sampling import derived_seed

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process, 0 .. size - 1
    size: int = 1  # processes in the run (torchrun's WORLD_SIZE)
    local_rank: int = 0  # this process on its node: the CUDA device it drives

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (once); a single process joins nothing.

    CUDA tensors travel over NCCL and CPU tensors over gloo (one group serves both, so a run on GPUs can
    still reduce a CPU tensor); without CUDA everything goes over gloo. Each process drives the CUDA device
    of its ``LOCAL_RANK``.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        return world()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return world()


def world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return world().is_main


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if world().size > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world().size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def local_examples(count: int, per_update: int) -> list[int]:
    """Positions in the global batch of ``count`` examples that this rank rolls out and trains on.

    The batch is split into updates of ``per_update`` examples (the mini-batches), and each rank takes a
    contiguous 1/W of every update, so every optimizer update is spread over all ranks. Both counts must
    divide by the world size (``grace.distributed.parallel.check_world_size`` says so at start-up).
    """
    w = world()
    share = per_update // w.size
    return [start + w.rank * share + i for start in range(0, count, per_update) for i in range(share)]


def gather_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, without gradient: ``values`` [r, ...] are this rank's rows, ``rows`` [r] their
    positions in the global layout (0 .. R - 1 over all ranks); returns [R, ...] with row ``rows[i]`` of
    rank k at that position, the layout one process would hold.

    Ranks may hold different numbers of rows: each pads to the largest count for the all-gather and the
    padding is trimmed. Bool tensors travel as uint8.
    """
    rows = rows.to(values.device)
    if world().size == 1:
        out = torch.empty_like(values)
        out[rows] = values.detach()
        return out
    size = world().size
    counts = _all_gather(torch.tensor([len(rows)], device=values.device)).tolist()
    widest = max(counts)

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        padded = tensor.new_zeros((widest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        everyone = _all_gather(padded).view(size, widest, *tensor.shape[1:])
        return torch.cat([everyone[k, : counts[k]] for k in range(size)])

    carried = values.detach().to(torch.uint8) if values.dtype == torch.bool else values.detach()
    gathered, positions = gather(carried), gather(rows)
    out = torch.empty_like(gathered)
    out[positions] = gathered
    return out.bool() if values.dtype == torch.bool else out


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """[W * n, ...]: every rank's ``tensor`` [n, ...] (same shape on every rank), rank-major."""
    tensor = tensor.contiguous()
    out = tensor.new_empty((world().size * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(out, tensor)
    return out


def sum_over_ranks(value: torch.Tensor | float) -> torch.Tensor:
    """The sum of ``value`` over ranks (a copy; the input is left alone)."""
    return _reduce(value, dist.ReduceOp.SUM) if world().size > 1 else torch.as_tensor(value)


def max_over_ranks(value: torch.Tensor | float) -> torch.Tensor:
    return _reduce(value, dist.ReduceOp.MAX) if world().size > 1 else torch.as_tensor(value)


def reduce_sums(values: dict[str, float], maxima: frozenset[str] = frozenset()) -> dict[str, float]:
    """Sums over ranks of named numbers (``maxima``: those reduced by max), in one collective each kind."""
    if world().size == 1:
        return dict(values)
    names = sorted(values)
    summed = [n for n in names if n not in maxima]
    largest = [n for n in names if n in maxima]
    out = dict(zip(summed, sum_over_ranks(torch.tensor([float(values[n]) for n in summed], dtype=torch.float64)).tolist()))
    if largest:
        out.update(zip(largest, max_over_ranks(torch.tensor([float(values[n]) for n in largest], dtype=torch.float64)).tolist()))
    return out


def _reduce(value: torch.Tensor | float, op) -> torch.Tensor:
    tensor = torch.as_tensor(value).clone()
    dist.all_reduce(tensor, op=op)
    return tensor


class _Silent:
    """What ``on_main`` gives the other ranks: every method call does nothing and returns None."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def on_main(make: Callable[[], T]) -> T:
    """``make()`` on rank 0; elsewhere an object whose every method call does nothing. For objects whose
    methods only write (the run logger): the other ranks call the same methods, and nothing is written twice."""
    return make() if is_main() else _Silent()  # type: ignore[return-value]



def seed_step(seed: int, step: int) -> None:
    """Seed torch's global generators (dropout, say) from (seed, step, rank): each rank draws its own
    stream, and a run resumed with another world size draws what it would have drawn at that step."""
    torch.manual_seed(derived_seed(f"{seed}/{step}/rank{world().rank}"))
