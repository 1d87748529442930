"""The generation engine: rationales and pooled embeddings for many prompts through S decoding slots.

``grace.generation.reference.generate`` decodes one fixed batch: the prompt pass of every row, then steps until
the longest rationale ends, finished rows riding along as padding. The engine computes the same tokens,
log-probs and embeddings (tested against it) with three changes that do not alter a result:

* **Shared prefix** (``grace.generation.prefix``): the tokens every prompt starts with (system block + template)
  go through the model once per call; each row's prompt pass covers only its own tail (text + template).
* **Continuous batching**: when a row ends (EOS or its limit) its slot takes the next waiting row, whose
  prompt tail is written into the running KV cache (``grace.generation.kv_slots``), instead of idling until the
  longest rationale of a batch ends. Rows wait longest prompt first; results come back in input order;
  each row samples from its own seeded generator, so its rationale does not depend on its neighbours.
* **Compiled decoding** (opt-in, for GPUs): a static cache and a ``torch.compile``d step
  (``grace.generation.compiled``).

The k identical prompts of a text (k samples) still share one prompt pass, as in ``generate``.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs

from grace.generation.compiled import CompiledDecoder, compiled_decoder
from grace.generation.kv_slots import SlotCache
from grace.generation.options import GenerationOptions
from grace.generation.prefix import SharedPrefix, common_prefix_length, compute_prefix
from grace.generation.reference import Generation, RowSampling
from grace.generation.sampling import row_generators, sample_next
from grace.model.forward import decoder_forward, lm_logits, model_device, position_ids
from grace.model.pooling import normalise_mean, pooling_mask
from grace.model.prompts import Prompt, Span

logger = logging.getLogger(__name__)


def supports(model: PreTrainedModel) -> bool:
    """Whether the engine can drive ``model``: full attention in every layer (no sliding windows or
    linear-attention layers, whose caches the slot layout does not cover)."""
    layer_types, _ = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    return all(kind == "full_attention" for kind in layer_types)


@torch.no_grad()
def generate_rows(
    model: PreTrainedModel,
    prompts: list[Prompt],
    rows: RowSampling,
    *,
    pooling: str,
    slots: int,
    options: GenerationOptions = GenerationOptions(),
    progress: Callable[[int], None] | None = None,
) -> Generation:
    """Generate a rationale for each of the R prompts, prompt i decoded with ``rows``' entry i.

    Returns the rows in input order, in ``generate``'s layout (prompt left-padded, rationale right-padded).
    ``pooling``: one of ``grace.model.pooling.POOLING_METHODS``. ``slots``: rows decoded together.
    ``progress(n)`` is called as rows finish. Raises ValueError when there are no prompts or ``rows``
    does not hold one row per prompt.
    """
    if not prompts:
        raise ValueError("no prompts to generate for")
    run = _Run(model, prompts, rows, pooling, slots, options, progress)
    run.loop()
    return run.result()


# A finished row's slot is refilled once this share of the slots is free (or nothing else is decoding):
# each refill is a forward pass of its own, so refilling one slot at a time costs per-pass overhead.
_REFILL_SHARE = 8
# Columns beyond the longest row's need (prompt tail + rationale). A row's columns span at most that need,
# so compaction frees at least this many and runs at most every this many steps; kept small because the
# cache is S x (prefix + need + margin) columns, no more than the plain loop's S x (prompt + rationale).
_MARGIN = 16


class _Run:
    """One call of ``generate_rows``: the waiting rows, the slots' state and the results so far."""

    def __init__(self, model, prompts: list[Prompt], rows: RowSampling, pooling: str, slots: int, options, progress):
        rows.check_covers(len(prompts))
        self.model, self.prompts, self.pooling, self.options = model, prompts, pooling, options
        self.device = device = model_device(model)
        self.temperature_all = rows.temperature.float().to(device)
        self.top_p_all = rows.top_p.float().to(device)
        self.limit_all = rows.max_new_tokens.long().to(device)
        self.generators_all = row_generators(rows.seeds)
        self.eos = torch.tensor(rows.eos_ids, device=device)
        self.pad_id = rows.pad_id
        self.progress: Callable[[int], None] | None = progress

        length = common_prefix_length(prompts) if options.shared_prefix else 0
        self.prefix: SharedPrefix | None = compute_prefix(model, prompts[0], length, pooling) if length else None
        self.prefix_length = length
        self.tails = [(tuple(p.ids[length:]), tuple(p.spans[length:])) for p in prompts]
        # Longest prompts first (as the plain path sorts): a slot's later tails fit the body already there.
        self.pending = deque(sorted(range(len(prompts)), key=lambda r: -len(self.tails[r][0])))

        # Compiled: always ``slots`` slots, so every call has the shapes the step was compiled for.
        count = slots if options.compile else min(slots, len(prompts))
        need = max(len(t[0]) for t in self.tails) + int(self.limit_all.max())
        capacity = length + need + _MARGIN
        self.cache, self.decoder = _slot_cache(model, self.prefix, count, capacity, options.compile)
        # Without continuous batching, rows enter only when every slot is free: fixed batches.
        self.threshold = max(1, count // _REFILL_SHARE) if options.continuous else count + 1

        hidden_size = model.config.get_text_config(decoder=True).hidden_size
        self.row = torch.full((count,), -1, dtype=torch.long, device=device)  # [S] row in each slot, -1 free
        self.next_token = torch.full((count,), self.pad_id, dtype=torch.long, device=device)  # [S] to feed next
        self.next_logprob = torch.zeros(count, device=device)  # [S]
        self.generated = torch.zeros(count, dtype=torch.long, device=device)  # [S] tokens fed so far
        self.position = torch.zeros(count, dtype=torch.long, device=device)  # [S] position of the next token
        self.summed = torch.zeros(count, hidden_size, device=device)  # [S, H] running pool (float32)
        self.count = torch.zeros(count, device=device)  # [S] tokens pooled
        self.slot_generators: list[torch.Generator | None] = [None] * count

        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.logprobs: list[list[float]] = [[] for _ in prompts]
        self.embeddings = torch.zeros(len(prompts), hidden_size, device=device)
        self.truncated = torch.zeros(len(prompts), dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ the loop

    def loop(self) -> None:
        while True:
            free = torch.nonzero(self.row < 0).flatten()
            busy = len(free) < len(self.row)
            if self.pending and len(free) and (len(free) >= self.threshold or not busy):
                take = [self.pending.popleft() for _ in range(min(len(free), len(self.pending)))]
                self._enter(take, free[: len(take)])
                continue
            if not busy:
                return
            if not self.pending and not self.cache.static and 2 * (len(self.row) - len(free)) <= len(self.row):
                self._shrink()
            self._step()

    def _enter(self, rows: list[int], slots: torch.Tensor) -> None:
        """Prompt pass of ``rows``' tails into the free ``slots``; each identical tail is computed once."""
        first: dict[tuple, int] = {}
        source = [first.setdefault(self.tails[r], i) for i, r in enumerate(rows)]
        distinct = sorted(set(source))
        width = max(len(self.tails[rows[i]][0]) for i in distinct)
        ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        spans = torch.full((len(distinct), width), int(Span.PAD), dtype=torch.long)
        for j, i in enumerate(distinct):
            tail_ids, tail_spans = self.tails[rows[i]]
            ids[j, width - len(tail_ids) :] = torch.tensor(tail_ids)
            spans[j, width - len(tail_spans) :] = torch.tensor(tail_spans)
        ids, spans = ids.to(self.device), spans.to(self.device)
        self.cache.make_room(width, 1)
        mask = self.cache.open_rows(slots[distinct], spans != Span.PAD)
        hidden, _ = decoder_forward(self.model, ids, mask, position_ids(mask)[:, -width:], cache=self.cache, use_cache=True)
        copies = [i for i, s in enumerate(source) if s != i]
        if copies:
            self.cache.copy_rows(slots[[source[i] for i in copies]], slots[copies], width)
            inverse = torch.tensor([distinct.index(i) for i in source], device=self.device)
            hidden, spans = hidden[inverse], spans[inverse]  # [m, n, H], [m, n]

        rows_t = torch.tensor(rows, device=self.device)
        self.row[slots] = rows_t
        self.generated[slots] = 0
        self.position[slots] = self.prefix_length + (spans != Span.PAD).sum(dim=1)
        if self.pooling == "last_token":
            self.summed[slots] = hidden[:, -1].float()
            self.count[slots] = 1.0
        else:
            pooled = pooling_mask(spans, self.pooling)
            summed = torch.where(pooled.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)
            count = pooled.sum(dim=1).float()
            if self.prefix is not None:
                summed, count = summed + self.prefix.pooled_sum, count + self.prefix.pooled_count
            self.summed[slots], self.count[slots] = summed, count
        for slot, row in zip(slots.tolist(), rows):
            self.slot_generators[slot] = self.generators_all[row]

        decoding = self.limit_all[rows_t] > 0
        if bool(decoding.any()):
            self._sample(slots[decoding], hidden[decoding, -1])
        if not bool(decoding.all()):
            self._finish(slots[~decoding], ended=torch.zeros(int((~decoding).sum()), dtype=torch.bool, device=self.device))

    def _step(self) -> None:
        """Feed every busy slot its next token: pool its state, then sample the token after it."""
        occupied = self.row >= 0
        mask = self.cache.open_step()
        tokens = torch.where(occupied, self.next_token, self.pad_id)
        if self.decoder is not None:
            hidden = self.decoder.step(tokens.unsqueeze(1), mask, self.position.unsqueeze(1))
        else:
            hidden, _ = decoder_forward(
                self.model, tokens.unsqueeze(1), mask, self.position.unsqueeze(1), cache=self.cache, use_cache=True
            )
            hidden = hidden[:, -1]
        self.cache.close_step(occupied)

        for row, token, logprob in zip(
            self.row[occupied].tolist(), tokens[occupied].tolist(), self.next_logprob[occupied].tolist()
        ):
            self.tokens[row].append(token)
            self.logprobs[row].append(logprob)
        self.position += occupied
        self.generated += occupied
        state = hidden.float()
        if self.pooling == "last_token":
            self.summed = torch.where(occupied.unsqueeze(-1), state, self.summed)
        elif self.pooling in ("after_system", "rationale"):
            self.summed += torch.where(occupied.unsqueeze(-1), state, 0.0)
            self.count += occupied.float()

        limit = self.limit_all[self.row.clamp(min=0)]
        ended = occupied & torch.isin(tokens, self.eos)
        finished = occupied & (ended | (self.generated >= limit))
        going = occupied & ~finished
        if bool(going.any()):
            self._sample(torch.nonzero(going).flatten(), hidden[going])
        if bool(finished.any()):
            self._finish(torch.nonzero(finished).flatten(), ended[finished])

    def _sample(self, slots: torch.Tensor, hidden: torch.Tensor) -> None:
        """The next token of each of ``slots`` [m] from the last states ``hidden`` [m, H]."""
        rows = self.row[slots]
        logits = lm_logits(self.model, hidden)
        token, logprob = sample_next(
            logits,
            self.temperature_all[rows],
            self.top_p_all[rows],
            [self.slot_generators[s] for s in slots.tolist()],
        )
        self.next_token[slots], self.next_logprob[slots] = token, logprob

    def _finish(self, slots: torch.Tensor, ended: torch.Tensor) -> None:
        """Store the results of the rows in ``slots`` [m] and free the slots; ``ended`` [m]: by EOS."""
        rows = self.row[slots]
        if self.pooling == "last_token":
            self.embeddings[rows] = torch.nn.functional.normalize(self.summed[slots], dim=-1)
        else:
            self.embeddings[rows] = normalise_mean(self.summed[slots], self.count[slots])
        self.truncated[rows] = (self.limit_all[rows] > 0) & ~ended
        self.row[slots] = -1
        self.cache.release(slots)
        if self.progress is not None:
            self.progress(len(slots))

    def _shrink(self) -> None:
        """No row is waiting: drop the free slots, so the last rows do not compute idle ones."""
        keep = torch.nonzero(self.row >= 0).flatten()
        self.cache.select(keep)
        for name in ("row", "next_token", "next_logprob", "generated", "position", "summed", "count"):
            setattr(self, name, getattr(self, name)[keep])
        self.slot_generators = [self.slot_generators[s] for s in keep.tolist()]

    # ------------------------------------------------------------------ the result

    def result(self) -> Generation:
        """The rows in input order, laid out as ``generate`` lays them out."""
        rows = len(self.prompts)
        prompt_length = max(len(p.ids) for p in self.prompts)
        rationale_length = max(len(t) for t in self.tokens)
        width = prompt_length + rationale_length
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        spans = torch.full((rows, width), int(Span.PAD), dtype=torch.long)
        logprobs = torch.zeros((rows, rationale_length))
        for r, prompt in enumerate(self.prompts):
            n, t = len(prompt.ids), len(self.tokens[r])
            ids[r, prompt_length - n : prompt_length] = torch.tensor(prompt.ids)
            spans[r, prompt_length - n : prompt_length] = torch.tensor(prompt.spans)
            mask[r, prompt_length - n : prompt_length + t] = 1
            if t:
                ids[r, prompt_length : prompt_length + t] = torch.tensor(self.tokens[r])
                spans[r, prompt_length : prompt_length + t] = int(Span.RATIONALE)
                logprobs[r, :t] = torch.tensor(self.logprobs[r])
        device = self.device
        return Generation(
            sequence_ids=ids.to(device),
            attention_mask=mask.to(device),
            spans=spans.to(device),
            logprobs=logprobs.to(device),
            embeddings=self.embeddings,
            truncated=self.truncated,
            prompt_length=prompt_length,
        )


def _slot_cache(
    model: PreTrainedModel, prefix: SharedPrefix | None, slots: int, capacity: int, compiled: bool
) -> tuple[SlotCache, CompiledDecoder | None]:
    """An empty slot cache holding ``prefix`` (and the compiled step that decodes into it, if asked)."""
    config = model.config.get_text_config(decoder=True)
    decoder = compiled_decoder(model, slots, capacity) if compiled else None
    cache = decoder.cache if decoder is not None else SlotCache(config.num_hidden_layers, slots, capacity)
    if prefix is not None:
        keys = prefix.keys_values[0][0]
        kv_heads, head_dim, dtype = keys.shape[1], keys.shape[3], keys.dtype
    else:
        kv_heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = _compute_dtype(model)
    if not (cache.is_allocated and cache.layers[0].keys.dtype == dtype):
        cache.allocate(kv_heads, head_dim, dtype, model_device(model))
    cache.reset_layout()
    if prefix is not None:
        cache.write_prefix(prefix.keys_values)
    return cache, decoder


def _compute_dtype(model: PreTrainedModel) -> torch.dtype:
    """The dtype keys and values come out in: autocast's when it is on (bf16 training), else the weights'."""
    device_type = model_device(model).type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return next(model.parameters()).dtype
