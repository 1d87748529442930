"""Rollouts: k rationales per text and role, generated in batches, gathered into one typed batch.

A training example contributes texts in up to three roles (query, positive, negative); each role has
its own sampling settings (the paper: positive k=8 at T=1.0, query and negative k=1 at T=0.5). All
rows of one example share a group id, which is what rewards and advantages group by.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.data.roles import Role
from grace.generation.engine import generate_rows, supports
from grace.generation.options import GenerationOptions
from grace.generation.reference import Generation, RowSampling, generate
from grace.model.prompts import Prompt, PromptBatch, PromptTemplate, Span, render_prompt
from grace.model.rows import SequenceRows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSampling:
    """How the rationales of one role are sampled."""

    num_samples: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


@dataclass(frozen=True)
class RolloutRequest:
    """One text to roll out, in a role, for a group (training example)."""

    text: str
    group: int
    role: Role


@dataclass
class RolloutBatch(SequenceRows):
    """R rollouts: prompt (left-padded to P) followed by rationale (right-padded to T)."""

    sequence_ids: torch.Tensor  # [R, P + T] long
    attention_mask: torch.Tensor  # [R, P + T] long
    spans: torch.Tensor  # [R, P + T] long, Span labels
    logprobs: torch.Tensor  # [R, T] float32, sampling log-probs of the rationale tokens (0 on padding)
    embeddings: torch.Tensor  # [R, H] float32, L2-normalised
    group: torch.Tensor  # [R] long, training-example index
    role: torch.Tensor  # [R] long, Role
    truncated: torch.Tensor  # [R] bool, rationale hit its length limit without EOS
    input_truncated: torch.Tensor  # [R] bool, the input text was cut to the prompt budget
    temperature: torch.Tensor  # [R] float32, sampling temperature (the loss scales logits by it)
    prompt_length: int  # P
    texts: list[str] = field(default_factory=list)  # [R] input text of each rollout

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        """The rows ``rows`` [r], trimmed to their own widest prompt and rationale (less padding to compute)."""
        rows = rows.to(self.sequence_ids.device)
        real = self.attention_mask[rows].bool()
        prompt_real = real[:, : self.prompt_length]
        first = int(prompt_real.float().argmax(dim=1).min()) if prompt_real.any() else 0
        longest = int(self.rationale_mask[rows].sum(dim=1).max()) if len(rows) else 0
        end = self.prompt_length + longest
        trimmed = replace(
            self,
            sequence_ids=self.sequence_ids[:, first:end],
            attention_mask=self.attention_mask[:, first:end],
            spans=self.spans[:, first:end],
            logprobs=self.logprobs[:, :longest],
            prompt_length=self.prompt_length - first,
        )
        return trimmed.take(rows)


def expand_requests(
    requests: list[RolloutRequest], sampling: dict[Role, RoleSampling]
) -> list[tuple[RolloutRequest, RoleSampling]]:
    """Each request repeated ``num_samples`` times for its role, in request order."""
    missing = {r.role for r in requests} - set(sampling)
    if missing:
        raise ValueError(f"no sampling settings for role(s) {sorted(Role(m).name.lower() for m in missing)}")
    return [(request, sampling[request.role]) for request in requests for _ in range(sampling[request.role].num_samples)]


def rollout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    requests: list[RolloutRequest],
    sampling: dict[Role, RoleSampling],
    *,
    pooling: str,
    max_prompt_tokens: int | None,
    seeds: list[int],
    batch_size: int = 64,
    options: GenerationOptions = GenerationOptions(),
    progress: Callable[[int], None] | None = None,
) -> RolloutBatch:
    """Roll out every request ``num_samples`` times; ``seeds`` gives one seed per rollout row (ValueError
    from ``RowSampling`` when their counts differ).

    ``batch_size``: rows decoded together (the engine's slots). ``options``: how (``grace.generation.engine``); all
    off, rows go in fixed batches of ``batch_size``, longest prompts together, through the plain loop.
    ``progress(n)`` is called as rows finish.
    """
    rows = expand_requests(requests, sampling)
    row_sampling = RowSampling(
        temperature=torch.tensor([s.temperature for _, s in rows], dtype=torch.float32),
        top_p=torch.tensor([s.top_p for _, s in rows], dtype=torch.float32),
        max_new_tokens=torch.tensor([s.max_new_tokens for _, s in rows]),
        seeds=seeds,
        eos_ids=stop_token_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    prompts = [render_prompt(tokenizer, request.text, template, max_prompt_tokens) for request, _ in rows]
    if _use_engine(model, options):
        merged = generate_rows(
            model, prompts, row_sampling, pooling=pooling, slots=batch_size, options=options, progress=progress
        )
    else:
        merged = _fixed_batches(model, prompts, row_sampling, pooling, batch_size, progress)
    device = merged.sequence_ids.device
    return RolloutBatch(
        sequence_ids=merged.sequence_ids,
        attention_mask=merged.attention_mask,
        spans=merged.spans,
        logprobs=merged.logprobs,
        embeddings=merged.embeddings,
        group=torch.tensor([r.group for r, _ in rows], dtype=torch.long, device=device),
        role=torch.tensor([int(r.role) for r, _ in rows], dtype=torch.long, device=device),
        truncated=merged.truncated,
        input_truncated=torch.tensor([p.input_truncated for p in prompts], device=device),
        temperature=row_sampling.temperature.to(device),
        prompt_length=merged.prompt_length,
        texts=[r.text for r, _ in rows],
    )


def _use_engine(model: PreTrainedModel, options: GenerationOptions) -> bool:
    if options.plain:
        return False
    if not supports(model):
        logger.warning("%s has attention layers the generation engine does not cover: using the plain loop", type(model).__name__)
        return False
    return True


def _fixed_batches(
    model: PreTrainedModel,
    prompts: list[Prompt],
    rows: RowSampling,
    pooling: str,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> Generation:
    """The plain path: ``batch_size`` rows at a time, longest prompts together so padding stays small."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    chunks: list[tuple[list[int], Generation]] = []
    for start in range(0, len(prompts), batch_size):
        index = order[start : start + batch_size]
        batch = PromptBatch.collate([prompts[i] for i in index], rows.pad_id)
        chunks.append((index, generate(model, batch, rows.select(index), pooling=pooling)))
        if progress is not None:
            progress(len(index))
    merged = merge_generations([c for _, c in chunks], pad_id=rows.pad_id)
    # Undo the length sort: row i of the result is prompts[i].
    inverse = torch.empty(len(prompts), dtype=torch.long)
    inverse[torch.tensor([i for index, _ in chunks for i in index])] = torch.arange(len(prompts))
    return merged.take(inverse.to(merged.sequence_ids.device))


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a turn, sorted: the tokenizer's EOS plus the generation config's
    (``generation_config.json``'s ``eos_token_id``, one id or a list: Llama 3 has several). Embedding caches
    and revisions hash this list (``grace.embedding.encoder.generation_fingerprint``)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def merge_generations(chunks: list[Generation], pad_id: int) -> Generation:
    """Concatenate generations with different prompt / rationale widths into one layout."""
    prompt_length = max(c.prompt_length for c in chunks)
    rationale_length = max(c.logprobs.shape[1] for c in chunks)

    def widen(tensor: torch.Tensor, chunk: Generation, fill: int | float) -> torch.Tensor:
        left = prompt_length - chunk.prompt_length
        right = rationale_length - (tensor.shape[1] - chunk.prompt_length)
        return torch.nn.functional.pad(tensor, (left, right), value=fill)

    def widen_right(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, rationale_length - tensor.shape[1]), value=0.0)

    return Generation(
        sequence_ids=torch.cat([widen(c.sequence_ids, c, pad_id) for c in chunks]),
        attention_mask=torch.cat([widen(c.attention_mask, c, 0) for c in chunks]),
        spans=torch.cat([widen(c.spans, c, int(Span.PAD)) for c in chunks]),
        logprobs=torch.cat([widen_right(c.logprobs) for c in chunks]),
        embeddings=torch.cat([c.embeddings for c in chunks]),
        truncated=torch.cat([c.truncated for c in chunks]),
        prompt_length=prompt_length,
    )
