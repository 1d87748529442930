"""The shared prompt prefix: the tokens every prompt of a call starts with, run through the model once.

Every GRACE prompt is ``system block + template + text + template`` (``grace.model.prompts``), so all prompts
of a rollout share their first ~46 tokens (SmolLM2's chat template), 97% of a one-word prompt. Their
keys, values and last-layer states are the same for every row, because a causal model's state at a
position depends only on the tokens up to it and positions count from the first real token. They are
computed once per call (one forward pass of ~46 tokens) and reused by every row of every batch; computing
them per call, never caching them across calls, means a weight update between calls (every training
step) can never serve a stale prefix.

The prefix is found, not assumed: the longest run of leading (token, span) pairs shared by every prompt,
so it holds for any chat template and includes more when all texts also start alike (k samples of one
text share everything but the last token). Each prompt keeps at least one token of its own, because the
next-token logits come from the last prompt token's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from grace.model.forward import decoder_forward, model_device
from grace.model.pooling import pooling_mask
from grace.model.prompts import Prompt


@dataclass
class SharedPrefix:
    """The model's view of the first ``length`` tokens of every prompt of a call."""

    length: int  # L0
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, L0, head_dim]
    pooled_sum: torch.Tensor  # [H] float32, sum of the prefix states the pooling includes
    pooled_count: int  # how many prefix tokens the pooling includes


def common_prefix_length(prompts: list[Prompt]) -> int:
    """Leading (token, span) pairs shared by every prompt, at most the shortest prompt's length minus one."""
    if not prompts:
        return 0
    first = prompts[0]
    limit = min(len(p.ids) for p in prompts) - 1
    length = 0
    while length < limit and all(
        p.ids[length] == first.ids[length] and p.spans[length] == first.spans[length] for p in prompts
    ):
        length += 1
    return length


def compute_prefix(model: PreTrainedModel, prompt: Prompt, length: int, pooling: str) -> SharedPrefix:
    """Run the first ``length`` tokens of ``prompt`` through ``model`` (batch of one, no padding)."""
    device = model_device(model)
    ids = torch.tensor([prompt.ids[:length]], device=device)
    spans = torch.tensor([prompt.spans[:length]], device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(length, device=device).unsqueeze(0)
    hidden, cache = decoder_forward(model, ids, mask, positions, use_cache=True)
    # "last_token" pools the last prompt token, never a prefix one (each prompt keeps a token of its own).
    pooled = pooling_mask(spans, pooling) if pooling != "last_token" else torch.zeros_like(spans, dtype=torch.bool)
    pooled_sum = torch.where(pooled.unsqueeze(-1), hidden.float(), 0.0).sum(dim=1)[0]
    keys_values = [(layer.keys, layer.values) for layer in cache.layers]
    return SharedPrefix(length, keys_values, pooled_sum, int(pooled.sum()))
