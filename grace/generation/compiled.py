"""Compiled decoding (opt-in, ``generation.compile=true``): a static KV cache and a compiled decode step.

On a GPU an eager decoding step of a small model is mostly kernel-launch and Python overhead (30
layers x ~15 kernels for one token per row). ``torch.compile`` fuses the step's kernels, and on CUDA its
"reduce-overhead" mode records them once as a CUDA graph and replays it every step. Both need fixed
shapes and fixed tensor addresses, so the step always sees the whole [S, C] slot buffers, masked beyond
the cursor, and a tensor cursor (``grace.generation.kv_slots.SlotCache`` with ``static=True``). The buffers, and
so the compiled graph, are kept per model and shape and reused by later calls.

Prompt passes (tails of varying width) stay eager: compiling them would recompile for every width.
On a CPU the compiled step runs too (tested to give the eager loop's tokens and embeddings); whether it
is faster there depends on the machine.
"""
from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedModel

from grace.generation.kv_slots import SlotCache
from grace.model.forward import _cache_keyword, model_device

# torch.compile's backend. Tests may set "eager" (Dynamo traces the real step, without Inductor's
# minutes of code generation on a small CPU).
BACKEND = "inductor"
# Capacities are rounded up to this many columns, so calls with slightly different prompt lengths share
# one compiled graph instead of recompiling.
_CAPACITY_STEP = 256

_DECODERS: "weakref.WeakKeyDictionary[PreTrainedModel, dict[tuple, CompiledDecoder]]" = (
    weakref.WeakKeyDictionary()
)


class CompiledDecoder:
    """The compiled decode step of one model over one static slot cache."""

    def __init__(self, model: PreTrainedModel, slots: int, capacity: int):
        config = model.config.get_text_config(decoder=True)
        self.cache = SlotCache(config.num_hidden_layers, slots, capacity, static=True)
        self._decoder = model.get_decoder()
        self._keyword = _cache_keyword(type(self._decoder))
        self._cuda_graphs = model_device(model).type == "cuda"
        mode = "reduce-overhead" if self._cuda_graphs else None  # CUDA graphs only exist on CUDA
        self._compiled = torch.compile(self._forward, backend=BACKEND, dynamic=False, mode=mode)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        output = self._decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            **{self._keyword: self.cache},
        )
        return output.last_hidden_state[:, -1]

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Last-layer states [S, H] of one token per slot (``input_ids``, ``positions`` [S, 1], mask [S, C])."""
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # A CUDA graph's outputs are overwritten by its next replay: keep a copy.
        return self._compiled(input_ids, attention_mask, positions).clone()


def compiled_decoder(model: PreTrainedModel, slots: int, capacity: int) -> CompiledDecoder:
    """The decoder for ``model`` with ``slots`` slots and at least ``capacity`` columns (made once, reused)."""
    capacity = -(-capacity // _CAPACITY_STEP) * _CAPACITY_STEP
    decoders = _DECODERS.setdefault(model, {})
    key = (slots, capacity, BACKEND)
    if key not in decoders:
        decoders[key] = CompiledDecoder(model, slots, capacity)
    return decoders[key]
