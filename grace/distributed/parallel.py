"""Data-parallel training on PyTorch's own engine: DDP or FSDP2 around the trained model.

``trainer.strategy`` picks how N processes started by torchrun share the model:

* ``ddp``: every rank holds the whole model; ``DistributedDataParallel`` averages the gradients over
  ranks during the backward pass (the default under torchrun: ``auto``);
* ``fsdp``: ``fully_shard`` (FSDP2) splits every parameter, gradient and optimizer state over the ranks,
  one unit per decoder layer plus a root holding the embedding, the final norm and the LM head (tied or
  not); a unit's parameters are all-gathered around its forward and backward and freed after.

Training forwards go through ``grace.model.forward.LMForward`` wrapped by either engine, so every call passes
through a wrapped module's ``forward`` (where DDP prepares its gradient sync and FSDP gathers the root's
parameters). The engines leave three things to us, handled here:

* **Equal collectives.** FSDP runs collectives in every forward and backward, DDP in every synced
  backward: every rank must run the same number of them. A GRACE update skips rows with zero advantage,
  so ranks hold different numbers of micro-batches; ``micro_batches`` gives every rank the largest count,
  a rank with fewer running zero-weight micro-batches (a forward and backward on one of its rows whose
  loss is multiplied by 0). Under DDP only the last micro-batch of an update syncs (``no_sync`` before it).
* **Rollouts under FSDP.** Decoding runs a data-dependent number of forward passes (a rank whose
  rationales all end at once stops early), which per-layer all-gathers would deadlock. ``rollout()``
  gathers the whole model once before the rollout and frees it after (as TRL and verl gather ZeRO-3 /
  FSDP weights for generation): decoding then runs without any collective, at single-device speed, with
  the generation engine unchanged. It needs the unsharded model (in its training dtype) to fit on one
  device during the rollout, as the KV cache does anyway; sharding still saves the gradients and the
  optimizer state, which for AdamW in float32 are 3x the model. The alternative, every rank stepping
  until all are done (transformers' ``synced_gpus``), would all-gather every layer for every decoded token.
* **The global normaliser.** Both engines average gradients over ranks; each rank's loss is its rows'
  share of the global-batch loss (divided by global counts), so ``loss_scale`` (= world size) makes the
  average the one-process gradient of the global batch.

Checkpoints hold the full model (``full_state``, gathered to rank 0) and the optimizer state keyed by
parameter name, not by rank (``optimizer_state``), so a run resumes with any world size or strategy.
"""
from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from grace.config import ConfigError, TrainConfig
from grace.distributed.ranks import World, max_over_ranks, world
from grace.model.forward import LMForward, model_device

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU
_PREFIX = "lm."  # LMForward's name for the model it wraps


def resolve_strategy(name: str, layout: World) -> str:
    """``single`` (one process), ``ddp`` or ``fsdp``. ``auto``: DDP when torchrun started several processes."""
    if layout.size == 1:
        return "single"
    return "ddp" if name == "auto" else name


def check_world_size(cfg: TrainConfig, layout: World) -> None:
    """Every rank rolls out and trains on an equal share of every update's examples (ConfigError if not)."""
    if layout.size == 1:
        return
    t = cfg.trainer
    for key, value in (("trainer.batch_size", t.batch_size), ("trainer.mini_batch_size", t.mini_batch_size)):
        if value is not None and value % layout.size:
            raise ConfigError(
                f"{key}={value} does not split over {layout.size} processes (WORLD_SIZE={layout.size}): every rank takes "
                f"an equal share of each step's examples (and of each mini-batch), so use a multiple of {layout.size}"
            )


class Parallel:
    """The trained model as training code calls it, in one process or spread over torchrun's ranks.

    ``model`` is the causal LM itself: rollouts and checkpoints use it (under FSDP only inside
    ``rollout()``, where its parameters are whole). ``module`` is what training forwards call
    (``grace.model.forward.hidden_and_logits``): ``LMForward(model)``, wrapped in DDP or sharded by FSDP.
    """

    def __init__(self, model: PreTrainedModel, strategy: str = "single", *, reads_logits: bool = True):
        """``reads_logits=False`` (objectives that only pool hidden states): an LM head not tied to the input
        embedding is frozen, as it gets no gradient anyway, which DDP would otherwise wait for."""
        if strategy not in ("single", "ddp", "fsdp"):
            raise ValueError(f"unknown strategy {strategy!r}: single, ddp or fsdp")
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if not reads_logits and head is not None and head.weight is not embedding.weight:
            head.requires_grad_(False)
        self.model = model
        self.strategy = strategy
        self.world = world()
        forward: torch.nn.Module = LMForward(model)
        if strategy == "fsdp":
            _shard(forward, self.world)
        elif strategy == "ddp":
            device = model_device(model)
            forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC)
        self.module = forward

    @property
    def loss_scale(self) -> float:
        """Multiplies each rank's loss: DDP and FSDP average gradients over ranks, and each rank's loss is its
        share of the global-batch loss, so the average times the world size is the global-batch gradient."""
        return 1.0 if self.strategy == "single" else float(self.world.size)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates (under FSDP: the shards); frozen weights (LoRA's base) are left out."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def frozen(self, model: PreTrainedModel) -> torch.nn.Module:
        """A frozen model (the KL reference) as training forwards call it: under FSDP sharded like the policy,
        with a root of its own; elsewhere the model itself (no gradient flows through it, nothing to sync)."""
        model.requires_grad_(False)
        if self.strategy != "fsdp":
            return model
        forward = LMForward(model)
        _shard(forward, self.world)
        return forward

    # ------------------------------------------------------------------ collectives in step

    def micro_batches(self, rows: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, bool]]:
        """``rows`` [n] in chunks of ``size``, as (rows, real): every rank gets as many chunks as the rank with
        the most, a rank with fewer filling in with one of its own rows (``real`` False: give it zero weight,
        but run its forward and backward as for a real one). Under DDP the last chunk's backward syncs the
        gradients accumulated by all of them; run each chunk's forward and backward before the next."""
        chunks = list(rows.split(size)) if len(rows) else []
        count = len(chunks) if self.strategy == "single" else int(max_over_ranks(len(chunks)))
        filler = rows[:1] if len(rows) else torch.zeros(1, dtype=torch.long)
        for index in range(count):
            with self.gradient_sync(last=index == count - 1):
                yield (chunks[index], True) if index < len(chunks) else (filler, False)

    def gradient_sync(self, *, last: bool):
        """DDP: no gradient all-reduce in this forward/backward unless it is the ``last`` of an accumulation.
        FSDP reduce-scatters every backward (keeping gradients sharded), so there is nothing to skip."""
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()
        return nullcontext()

    @contextmanager
    def rollout(self) -> Iterator[None]:
        """Inside: ``model``'s parameters are whole on every rank and its forwards run no collective (FSDP);
        elsewhere nothing changes. Every rank must enter and leave together (the gathering is a collective)."""
        if self.strategy != "fsdp":
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        self.module.set_reshard_after_forward(False)  # so the layers' own forward hooks keep them whole
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                if unit is not self.module:  # the root keeps FSDP's default: whole from forward to backward
                    unit.set_reshard_after_forward(True, recurse=False)

    # ------------------------------------------------------------------ checkpoints

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Every parameter and persistent buffer of ``model``, whole, on rank 0's CPU under the model's own
        names (None on the other ranks). A collective under FSDP: every rank must call it."""
        state = get_model_state_dict(self.module, options=_FULL)
        if not self.world.is_main:
            return None
        return {name.removeprefix(_PREFIX): tensor for name, tensor in state.items()}

    def export_model(self) -> PreTrainedModel | None:
        """The model to save, on rank 0 (None elsewhere): ``model`` itself, or under FSDP a CPU copy built
        from the gathered weights (every rank must call it then)."""
        if self.strategy != "fsdp":
            return self.model if self.world.is_main else None
        state = self.full_state()
        return None if state is None else materialise(meta_copy(self.model), state, self.model)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state keyed by parameter name, with whole tensors: loadable by any strategy and world
        size. A collective under FSDP."""
        return get_optimizer_state_dict(self.module, optimizer, options=_FULL)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load ``optimizer_state``'s output (each rank keeps its own shard under FSDP); a checkpoint from before
        named states (keyed by parameter index) loads as it was saved, in one process or under DDP."""
        if any(isinstance(key, int) for key in state.get("state", {})):
            if self.strategy == "fsdp":
                raise ValueError("this checkpoint's optimizer state predates named states and cannot be sharded: resume it without FSDP")
            optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(self.module, optimizer, state, options=StateDictOptions(full_state_dict=True))


# DDP re-broadcasts rank 0's buffers before every forward by default: a collective per forward (rollouts
# call the model outside DDP, so counts would differ) for buffers that never change here (rotary tables).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def _shard(forward: LMForward, layout: World) -> None:
    """FSDP2 on ``forward``: one unit per decoder layer, the rest (embedding, final norm, LM head) in the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = forward.lm
    device = model_device(model)
    mesh = init_device_mesh(device.type, (layout.size,))
    # transformers lists the blocks that must not be split across devices: the decoder layers.
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules): FSDP cannot find its units")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(forward, mesh=mesh)
    # FSDP takes the first module run as its root; rollouts call the decoder directly, so run one tiny
    # forward through the real root now. Then free the root's gathered parameters: the optimizer must be
    # built over the shards.
    with torch.no_grad():
        one = torch.ones((1, 1), dtype=torch.long, device=device)
        forward(one, one, one - 1)
    forward.reshard()


def meta_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A weightless copy of ``model``'s architecture (parameters on the meta device), to be filled by
    ``materialise``: building a model of billions of parameters this way allocates nothing."""
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    skeleton.generation_config = copy.deepcopy(model.generation_config)  # EOS ids: the encoder reads them
    return skeleton


def materialise(skeleton: torch.nn.Module, state: dict[str, torch.Tensor], like: torch.nn.Module) -> torch.nn.Module:
    """``skeleton`` holding ``state``'s tensors (taken, not copied), re-tied, with ``like``'s non-persistent
    buffers (rotary tables, which no state dict holds) copied to the CPU."""
    result = skeleton.load_state_dict(state, strict=False, assign=True)
    tied = getattr(getattr(skeleton, "config", None), "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]  # re-tied below
    if missing or result.unexpected_keys:
        raise ValueError(f"the gathered weights do not fit the model: missing {missing}, unexpected {result.unexpected_keys}")
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    for name, buffer in like.named_buffers():
        owner, _, attribute = name.rpartition(".")
        skeleton.get_submodule(owner)._buffers[attribute] = buffer.detach().to("cpu", copy=True)
    return skeleton
