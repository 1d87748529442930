"""A KV cache of S decoding slots that share one column layout: what continuous batching decodes into.

Every layer keeps preallocated key and value buffers [S, kv_heads, C, head_dim] and the cache keeps one
attention mask [S, C]. The columns of every slot are laid out alike:

    [0, L0)            the shared prefix (system block + template), written once for all slots
    [L0, cursor)       the body: each slot's prompt tail and generated tokens, right-aligned at the
                       cursor when the row enters; columns a slot does not use (its left padding, gaps,
                       a finished row's leftovers) are masked out
    [cursor, C)        free capacity (masked)

Why one column axis for all slots: a decoding step appends one column to every slot in one forward pass,
and a new row enters a free slot by writing its prompt tail into the columns just before the cursor
(the cursor first moves right if the tail is wider than the body). A token's state does not depend on
its column, because positions are per slot (``position_ids`` count real tokens) and rotary embeddings are
applied before keys are cached. Masked columns cost attention reads, not correctness; ``compact`` drops
leading body columns that every slot masks, so a long run stays within its capacity.

Compared with transformers' ``DynamicCache`` (which concatenates, i.e. copies the whole cache, at every
step), writes go in place; with ``static=True`` the decode step always sees the whole [S, C] buffers
and a tensor cursor, the fixed shapes ``torch.compile`` and CUDA graphs need (``grace.generation.compiled``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class _Window:
    """Which slots and columns the next forward pass writes; shared by the layers of one cache."""

    start: int = 0  # first column written by the next forward pass
    rows: torch.Tensor | None = None  # [m] slots entering (a prompt pass), None: a decoding step of all slots
    prefix_length: int = 0  # L0: what a prompt pass attends besides its own tokens
    static: bool = False  # whole buffers, tensor cursor: the compiled decode step
    cursor: torch.Tensor | None = None  # 0-d long, = start, for the compiled step


# Fewest dead leading columns worth a compaction before the capacity forces one.
_MIN_DEAD = 16


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values, written in place at the window's columns."""

    is_sliding = False

    def __init__(self, window: _Window):
        super().__init__()
        self.window = window

    @property
    def is_compileable(self) -> bool:  # create_causal_mask reads it: a compiled step gets a full mask
        return self.window.static

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("SlotCache buffers are allocated by SlotCache.allocate before any forward pass")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        window = self.window
        # Under bf16 autocast the rotary embedding leaves keys in float32 while values come out in bf16; the
        # buffers hold one dtype, and writes by row index (unlike slice assignment) do not cast by themselves.
        key_states, value_states = key_states.to(self.keys.dtype), value_states.to(self.values.dtype)
        if window.static:
            self.keys.index_copy_(2, window.cursor.view(1), key_states)
            self.values.index_copy_(2, window.cursor.view(1), value_states)
            return self.keys, self.values
        end = window.start + key_states.shape[2]
        if window.rows is None:
            self.keys[:, :, window.start : end] = key_states
            self.values[:, :, window.start : end] = value_states
            return self.keys[:, :, :end], self.values[:, :, :end]
        # A prompt pass: stored right-aligned at the cursor, but it attends only the prefix and its own
        # tokens, so its cost does not grow with the body other slots have built up.
        self.keys[window.rows, :, window.start : end] = key_states
        self.values[window.rows, :, window.start : end] = value_states
        if window.prefix_length == 0:
            return key_states, value_states
        rows, length = len(window.rows), window.prefix_length
        keys = torch.cat([self.keys[:1, :, :length].expand(rows, -1, -1, -1), key_states], dim=2)
        values = torch.cat([self.values[:1, :, :length].expand(rows, -1, -1, -1), value_states], dim=2)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        window = self.window
        if window.static:
            return self.keys.shape[2], 0
        return (window.start if window.rows is None else window.prefix_length) + query_length, 0

    def get_seq_length(self):
        window = self.window
        if window.static:
            return window.cursor
        return window.start if window.rows is None else window.prefix_length

    def get_max_length(self) -> int:
        return self.keys.shape[2] if self.keys is not None else -1


class SlotCache(Cache):
    """Keys, values and attention mask of ``slots`` decoding slots over ``num_layers`` layers.

    The engine drives it: ``allocate`` once, ``write_prefix``, then per forward pass ``open_rows`` (a
    prompt tail entering some slots) or ``open_step`` (one decoding step of every slot), and between
    passes ``make_room``, ``compact`` and ``select``.
    """

    def __init__(self, num_layers: int, slots: int, capacity: int, *, static: bool = False):
        self.window = _Window(static=False)
        super().__init__(layers=[SlotLayer(self.window) for _ in range(num_layers)])
        self.slots = slots
        self.capacity = capacity
        self.static = static  # the decode step runs compiled on whole buffers
        self.prefix_length = 0
        self.cursor = 0  # columns in use, the same for every slot
        self.mask = torch.zeros(0, 0, dtype=torch.bool)  # [S, C]
        self.step_cursor: torch.Tensor | None = None  # 0-d long mirror of cursor for the compiled step

    # ------------------------------------------------------------------ layout

    @property
    def is_allocated(self) -> bool:
        return self.layers[0].keys is not None

    def allocate(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Zeroed buffers [S, kv_heads, C, head_dim] per layer and an all-masked [S, C] mask."""
        for layer in self.layers:
            layer.keys = torch.zeros(self.slots, kv_heads, self.capacity, head_dim, dtype=dtype, device=device)
            layer.values = torch.zeros_like(layer.keys)
            layer.is_initialized = True
        self.mask = torch.zeros(self.slots, self.capacity, dtype=torch.bool, device=device)
        self.step_cursor = torch.zeros((), dtype=torch.long, device=device)
        self.window.cursor = self.step_cursor
        if self.static:  # fixed addresses: CUDA graphs replay on these very tensors
            for layer in self.layers:
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)
            torch._dynamo.mark_static_address(self.step_cursor)

    def reset_layout(self) -> None:
        """Forget every row and the prefix (the buffers are kept, and overwritten as rows enter)."""
        self.mask.zero_()
        self.prefix_length = self.cursor = 0

    def write_prefix(self, keys_values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy the shared prefix (per layer keys, values [1, kv_heads, L0, head_dim]) into every slot."""
        length = keys_values[0][0].shape[2]
        for layer, (keys, values) in zip(self.layers, keys_values):
            layer.keys[:, :, :length] = keys
            layer.values[:, :, :length] = values
        self.prefix_length = self.cursor = length

    def make_room(self, width: int, extra: int) -> None:
        """Ensure the body is at least ``width`` columns wide (a tail of that width can enter right-aligned)
        and ``extra`` free columns follow the cursor. Compacts when the capacity is reached, and (eager
        steps, which attend only up to the cursor) when dead columns would make a fifth of every
        step's attention; grows if compacting is not enough."""
        dead = self._dead_columns()
        live = self.cursor - self.prefix_length - dead
        full = max(self.cursor, self.prefix_length + width) + extra > self.capacity
        if dead and (full or (not self.static and dead >= max(_MIN_DEAD, live // 4))):
            self.compact()
        target = max(self.cursor, self.prefix_length + width)
        if target + extra > self.capacity:
            self._grow(max(target + extra, self.capacity + self.capacity // 4))
        self.cursor = target  # new columns are masked for every slot already

    def _dead_columns(self) -> int:
        """Leading body columns that every slot masks (finished rows' leftovers, old padding)."""
        used = self.mask[:, self.prefix_length : self.cursor].any(dim=0)
        return int(used.int().argmax()) if bool(used.any()) else len(used)

    def compact(self) -> None:
        """Drop the leading body columns that every slot masks: a copy of the rest of the body."""
        dead = self._dead_columns()
        if dead == 0:
            return
        start, end = self.prefix_length, self.cursor
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                buffer[:, :, start : end - dead] = buffer[:, :, start + dead : end].clone()
        self.mask[:, start : end - dead] = self.mask[:, start + dead : end].clone()
        self.mask[:, end - dead : end] = False
        self.cursor = end - dead

    def _grow(self, capacity: int) -> None:
        """Reallocate to ``capacity`` columns (a compiled step then recompiles for the new shape)."""
        for layer in self.layers:
            for name in ("keys", "values"):
                old = getattr(layer, name)
                new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
                new[:, :, : self.cursor] = old[:, :, : self.cursor]
                setattr(layer, name, new)
                if self.static:
                    torch._dynamo.mark_static_address(new)
        mask = self.mask.new_zeros(self.slots, capacity)
        mask[:, : self.cursor] = self.mask[:, : self.cursor]
        self.mask, self.capacity = mask, capacity

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the slots ``keep`` [s'] (in that order): fewer rows to compute once no row is waiting."""
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        self.mask = self.mask[keep]
        self.slots = len(keep)

    def copy_rows(self, source: torch.Tensor, target: torch.Tensor, width: int) -> None:
        """Copy the last ``width`` columns (a prompt tail) and the mask of slots ``source`` to ``target``
        [m]: k samples of one text share one prompt pass."""
        start = self.cursor - width
        for layer in self.layers:
            layer.keys[target, :, start : self.cursor] = layer.keys[source, :, start : self.cursor]
            layer.values[target, :, start : self.cursor] = layer.values[source, :, start : self.cursor]
        self.mask[target, : self.cursor] = self.mask[source, : self.cursor]

    def release(self, slots: torch.Tensor) -> None:
        """Mask the body of ``slots`` (their rows finished); the prefix stays attended, so a free slot's
        query in a decoding step is never fully masked."""
        self.mask[slots, self.prefix_length :] = False

    # ------------------------------------------------------------------ forward windows

    def open_rows(self, rows: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
        """Prepare a forward pass of prompt tails [m, n] (left-padded, ``tail_mask`` [m, n] bool) entering
        slots ``rows``, stored right-aligned at the cursor. The pass attends the prefix and the tails
        only: returns its attention mask [m, L0 + n].

        The slots must be free (``release`` masked what their last rows left). Call ``make_room(n, ...)``
        first.
        """
        width = tail_mask.shape[1]
        self.mask[rows, self.cursor - width : self.cursor] = tail_mask
        self.mask[rows, : self.prefix_length] = True
        window = self.window
        window.start, window.rows, window.prefix_length, window.static = self.cursor - width, rows, self.prefix_length, False
        return torch.cat([self.mask[rows, : self.prefix_length], tail_mask], dim=1)

    def open_step(self) -> torch.Tensor:
        """Prepare one decoding step: every slot gets a column at the cursor, attended by its own query
        (a free slot's too: a query that attends nothing can give NaN states on some backends, and NaN
        keys poison later rows even where masked). Returns the attention mask: [S, cursor + 1], or
        [S, C] for the compiled step. Call ``close_step`` after the forward pass.
        """
        if self.cursor >= self.capacity:
            self.make_room(0, 1)
        self.mask[:, self.cursor] = True
        self.window.start, self.window.rows, self.window.static = self.cursor, None, self.static
        if self.static:
            self.step_cursor.fill_(self.cursor)
            return self.mask
        return self.mask[:, : self.cursor + 1]

    def close_step(self, occupied: torch.Tensor) -> None:
        """End a decoding step; the new column stays attended only for ``occupied`` [S] slots."""
        self.mask[:, self.cursor] = occupied
        self.cursor += 1
        self.window.static = False
