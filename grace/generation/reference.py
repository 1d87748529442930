"""One batched generation pass that also produces the embeddings.

A KV-cached decoding loop written out by hand rather than ``model.generate`` because we need, from the
same forward passes: the last-layer hidden state of every pooled token (pooled on the fly, so no
[B, T, H] tensor and no second forward over the finished sequences), the log-probability of each
sampled token (the PPO "old" log-probs), per-row temperature / top_p / length limits, and a flag for
rationales cut at the length limit. ``RowSampling`` bundles the per-row settings both this loop and the
engine (``grace.generation.engine``) decode with.

A generated token's hidden state exists only once the token is fed back in, so the loop feeds every
generated token, EOS and the last token of a truncated rationale included, exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from grace.generation.sampling import row_generators, sample_next
from grace.model.forward import decoder_forward, lm_logits, model_device, position_ids
from grace.model.pooling import normalise_mean, pooling_mask
from grace.model.prompts import PromptBatch, Span
from grace.model.rows import SequenceRows


@dataclass(frozen=True, eq=False)  # eq=False: == on tensor fields has no single truth value
class RowSampling:
    """How each of R rows is decoded: its sampling settings, its seed, and the tokens that end or pad it.

    Raises ValueError when the per-row fields do not all have R entries (naming the fields and lengths).
    """

    temperature: torch.Tensor  # [R] float32, 0 = greedy
    top_p: torch.Tensor  # [R] float32, nucleus mass
    max_new_tokens: torch.Tensor  # [R] long, rationale length limit; 0 = no rationale
    seeds: list[int]  # [R] seed of each row's own generator
    eos_ids: list[int]  # every token that ends a rationale
    pad_id: int  # token id fed and stored after a row has ended

    def __post_init__(self) -> None:
        lengths = {}
        for name in ("temperature", "top_p", "max_new_tokens"):
            tensor = getattr(self, name)
            if tensor.dim() != 1:
                raise ValueError(f"RowSampling.{name} must be one value per row [R], got shape {tuple(tensor.shape)}")
            lengths[name] = tensor.shape[0]
        lengths["seeds"] = len(self.seeds)
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise ValueError(f"RowSampling fields need one entry per row, got different lengths: {listed}")

    def __len__(self) -> int:
        return len(self.seeds)

    def check_covers(self, prompts: int) -> None:
        """Raises ValueError unless there is one row of settings per prompt."""
        if len(self) != prompts:
            raise ValueError(f"need sampling settings for every prompt: {prompts} prompts, {len(self)} rows of settings")

    def select(self, index: list[int]) -> RowSampling:
        """The settings of rows ``index`` (a sub-batch), in that order; ``eos_ids`` and ``pad_id`` are shared."""
        return RowSampling(
            temperature=self.temperature[index],
            top_p=self.top_p[index],
            max_new_tokens=self.max_new_tokens[index],
            seeds=[self.seeds[i] for i in index],
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
        )


@dataclass
class Generation(SequenceRows):
    """Prompt (left-padded) followed by its rationale (right-padded), for B rows."""

    sequence_ids: torch.Tensor  # [B, P + T] long
    attention_mask: torch.Tensor  # [B, P + T] long, 1 on real tokens
    spans: torch.Tensor  # [B, P + T] long, Span labels
    logprobs: torch.Tensor  # [B, T] float32, log-prob of each generated token, 0 on padding
    embeddings: torch.Tensor  # [B, H] float32, L2-normalised pooled hidden states
    truncated: torch.Tensor  # [B] bool, hit max_new_tokens without EOS
    prompt_length: int  # P
    hidden: torch.Tensor | None = None  # [B, P + T, H] last-layer states, only with keep_hidden=True


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: PromptBatch,
    rows: RowSampling,
    *,
    pooling: str,
    keep_hidden: bool = False,
    share_prompts: bool = True,
) -> Generation:
    """Generate a rationale for each of the B rows of ``prompts``, row i decoded with ``rows``' entry i.

    A row with ``max_new_tokens == 0`` gets no rationale (the "no reasoning" embedding). ``pooling``: one
    of ``grace.model.pooling.POOLING_METHODS``. ``share_prompts``: run the prompt pass once per distinct prompt
    (the k samples of a text share it). Raises ValueError when ``rows`` does not hold B rows.
    """
    device = model_device(model)
    batch = prompts.input_ids.shape[0]
    rows.check_covers(batch)
    ids, mask = prompts.input_ids.to(device), prompts.attention_mask.to(device)
    temperature, top_p = rows.temperature.to(device), rows.top_p.to(device)
    limit = rows.max_new_tokens.to(device)
    eos = torch.tensor(rows.eos_ids, device=device)
    pad_id = rows.pad_id
    generators = row_generators(rows.seeds)

    positions = position_ids(mask)
    hidden, cache = _prompt_forward(model, ids, mask, positions, share_prompts)
    pool = _RunningPool(hidden, prompts.spans.to(device), pooling)
    kept_hidden = [hidden] if keep_hidden else []

    tokens_out: list[torch.Tensor] = []  # per step: [B] token fed (pad once a row has ended)
    logprobs_out: list[torch.Tensor] = []  # per step: [B] its sampling log-prob (0 once ended)
    alive_out: list[torch.Tensor] = []  # per step: [B] whether the row was still writing
    alive = limit > 0
    truncated = torch.zeros(batch, dtype=torch.bool, device=device)
    next_position = positions[:, -1] + 1
    logits = lm_logits(model, hidden[:, -1]) if bool(alive.any()) else None
    step = 0
    while bool(alive.any()):
        token, logprob = sample_next(logits, temperature, top_p, generators)
        token = torch.where(alive, token, pad_id)
        tokens_out.append(token)
        logprobs_out.append(torch.where(alive, logprob, 0.0))
        alive_out.append(alive)
        step += 1
        ended = torch.isin(token, eos)
        truncated |= alive & ~ended & (step >= limit)

        # Feed the token: its hidden state is pooled, its logits give the next token.
        mask = torch.cat([mask, alive.long().unsqueeze(1)], dim=1)
        hidden, cache = decoder_forward(
            model, token.unsqueeze(1), mask, next_position.unsqueeze(1), cache=cache, use_cache=True
        )
        next_position = next_position + 1
        pool.add(hidden[:, 0].float(), alive)
        if keep_hidden:
            kept_hidden.append(hidden)
        alive = alive & ~ended & (step < limit)
        if bool(alive.any()):
            logits = lm_logits(model, hidden[:, -1])

    new_tokens, new_mask, logprobs = _stack_steps(tokens_out, alive_out, logprobs_out, ids)
    spans = torch.cat([prompts.spans.to(device), torch.where(new_mask, int(Span.RATIONALE), int(Span.PAD))], dim=1)
    return Generation(
        sequence_ids=torch.cat([ids, new_tokens], dim=1),
        attention_mask=torch.cat([prompts.attention_mask.to(device), new_mask.long()], dim=1),
        spans=spans,
        logprobs=logprobs,
        embeddings=pool.embeddings(),
        truncated=truncated,
        prompt_length=ids.shape[1],
        hidden=torch.cat(kept_hidden, dim=1) if keep_hidden else None,
    )


class _RunningPool:
    """The embedding pooled while decoding: for mean pooling a running sum [B, H] and count [B] of the
    pooled states (float32); for ``last_token`` the latest state of each row still writing."""

    def __init__(self, prompt_hidden: torch.Tensor, prompt_spans: torch.Tensor, pooling: str):
        prompt_pool = pooling_mask(prompt_spans, pooling)  # [B, P] bool
        self.last = pooling == "last_token"
        self.rationale = pooling in ("after_system", "rationale")  # rationale tokens are pooled too
        self.summed = torch.where(prompt_pool.unsqueeze(-1), prompt_hidden.float(), 0.0).sum(dim=1)
        self.count = prompt_pool.sum(dim=1).float()

    def add(self, state: torch.Tensor, alive: torch.Tensor) -> None:
        """One decoding step: ``state`` [B, H] float32 of the token just fed, ``alive`` [B] bool."""
        if self.last:
            self.summed = torch.where(alive.unsqueeze(-1), state, self.summed)
        elif self.rationale:
            self.summed = self.summed + torch.where(alive.unsqueeze(-1), state, 0.0)
            self.count = self.count + alive.float()

    def embeddings(self) -> torch.Tensor:  # [B, H] float32, L2-normalised
        return torch.nn.functional.normalize(self.summed, dim=-1) if self.last else normalise_mean(self.summed, self.count)


def _stack_steps(tokens: list[torch.Tensor], alive: list[torch.Tensor], logprobs: list[torch.Tensor], ids: torch.Tensor):
    """The per-step [B] outputs as (tokens [B, T] long, real-token mask [B, T] bool, log-probs [B, T]);
    T = 0 when no row wrote a token."""
    if tokens:
        return torch.stack(tokens, dim=1), torch.stack(alive, dim=1), torch.stack(logprobs, dim=1)
    batch = ids.shape[0]
    return ids.new_zeros((batch, 0)), torch.zeros((batch, 0), dtype=torch.bool, device=ids.device), torch.zeros((batch, 0), device=ids.device)


def _prompt_forward(model, ids, mask, positions, share_prompts: bool):
    """Hidden states [B, P, H] and KV cache of the prompts, computed once per distinct prompt.

    GRACE samples k rationales of every text, so a rollout batch holds each prompt k times (8 times for
    the paper's positives); the prompt pass is most of the cost of short rationales on a CPU. The
    distinct prompts go through the model once and their states and cache are copied to the duplicates.
    """
    if share_prompts:
        distinct, inverse = torch.unique(ids, dim=0, return_inverse=True)
        if distinct.shape[0] < ids.shape[0]:
            first = torch.full((distinct.shape[0],), ids.shape[0], dtype=torch.long, device=ids.device)
            first = first.scatter_reduce(0, inverse, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
            hidden, cache = decoder_forward(model, ids[first], mask[first], positions[first], use_cache=True)
            cache.reorder_cache(inverse)
            return hidden[inverse], cache
    return decoder_forward(model, ids, mask, positions, use_cache=True)
