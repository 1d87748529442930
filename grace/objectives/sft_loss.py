"""Supervised fine-tuning on demonstrations: their token layout, and the loss on rationale tokens only.

A demonstration (text, rationale) becomes the very sequence a GRACE rollout of that text would be had the
policy written that rationale: the prompt of ``grace.model.prompts.render_prompt`` (same system prompt, chat
template and literal-text tokenisation, a long text cut inside the user text), then the rationale as
literal text and the EOS token that ends a rollout (``tokenizer.eos_token_id``, one of the tokens the
rollout stops at). It is laid out as a ``RolloutBatch`` (prompt left-padded, rationale right-padded,
span RATIONALE on the rationale and its EOS), so the rollout's pooling and forward helpers apply as they are.

For the demonstrations of one update, with N their rationale tokens (EOS included)::

    loss = -(1/N) sum over rationale tokens t of log p(t | everything before it)

Prompt tokens (system block, template, user text) and padding take no part. ``rationale_nll`` returns
the sum and the count, so micro-batches add up to the update's token mean exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from grace.data import Demonstration
from grace.data.roles import Role
from grace.generation.rollout import RolloutBatch
from grace.model.forward import hidden_and_logits, position_ids
from grace.model.prompts import PromptBatch, PromptTemplate, Span, render_prompt, text_token_ids


def rationale_token_ids(tokenizer: PreTrainedTokenizerBase, rationale: str) -> list[int]:
    """The rationale as literal text (surrounding whitespace stripped, as for input texts), then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {tokenizer.name_or_path!r} has no EOS token: a demonstration could not end")
    return text_token_ids(tokenizer, rationale.strip()) + [tokenizer.eos_token_id]


def demonstration_batch(
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    demonstrations: Sequence[Demonstration],
    max_prompt_tokens: int | None,
) -> RolloutBatch:
    """B demonstrations as one batch: [B, P + T] with P the widest prompt and T the widest rationale + EOS.

    Fields a rollout has and a demonstration does not: ``logprobs`` are 0, ``embeddings`` [B, 0],
    ``truncated`` False, ``role`` POSITIVE, ``temperature`` 1 (the loss is at the model's own distribution).
    """
    prompts = [render_prompt(tokenizer, d.text, template, max_prompt_tokens) for d in demonstrations]
    head = PromptBatch.collate(prompts, tokenizer.pad_token_id)
    rationales = [rationale_token_ids(tokenizer, d.rationale) for d in demonstrations]
    b, width = len(demonstrations), max(len(r) for r in rationales)
    ids = torch.full((b, width), tokenizer.pad_token_id, dtype=torch.long)
    real = torch.zeros((b, width), dtype=torch.bool)
    for row, tokens in enumerate(rationales):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        real[row, : len(tokens)] = True
    spans = torch.where(real, int(Span.RATIONALE), int(Span.PAD))
    return RolloutBatch(
        sequence_ids=torch.cat([head.input_ids, ids], dim=1),
        attention_mask=torch.cat([head.attention_mask, real.long()], dim=1),
        spans=torch.cat([head.spans, spans], dim=1),
        logprobs=torch.zeros(b, width),
        embeddings=torch.zeros(b, 0),
        group=torch.arange(b),
        role=torch.full((b,), int(Role.POSITIVE)),
        truncated=torch.zeros(b, dtype=torch.bool),
        input_truncated=head.input_truncated,
        temperature=torch.ones(b),
        prompt_length=head.input_ids.shape[1],
        texts=[d.text for d in demonstrations],
    )


@dataclass
class TokenLoss:
    nll_sum: torch.Tensor  # scalar float32, -sum of the rationale tokens' log-probs (with gradient)
    tokens: int  # rationale tokens counted (EOS included)
    correct: int  # of those, tokens that are the model's most likely next token


def rationale_nll(model: torch.nn.Module, batch: RolloutBatch) -> TokenLoss:
    """Negative log-likelihood of the rationale tokens of ``batch`` (with gradient if enabled) under ``model``,
    a causal LM or its ``LMForward`` wrapped for data-parallel training (``grace.model.forward.hidden_and_logits``).

    Logits are computed at the rationale positions only (the state at position t predicts token t + 1),
    as in ``grace.objectives.policy_gradient.ppo_loss.policy_logprobs``, never over the whole [B, P + T, V] sequence.
    """
    device = next(model.parameters()).device
    ids, mask = batch.sequence_ids.to(device), batch.attention_mask.to(device)
    width = ids.shape[1] - batch.prompt_length
    _, logits = hidden_and_logits(model, ids, mask, position_ids(mask), batch.prompt_length - 1, width)
    logits = logits.float()  # [B, T, V]
    targets = batch.rationale_ids.to(device)
    real = batch.rationale_mask.to(device)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    with torch.no_grad():
        correct = int(((logits.argmax(dim=-1) == targets) & real).sum())
    return TokenLoss(-torch.where(real, logprobs, 0.0).sum(), int(real.sum()), correct)
