"""GRACE prompts: a text rendered through the chat template, as token ids with a span label per token.

The span labels are what pooling reads: the paper pools everything after the system block (user text,
template tokens, rationale), other pooling options pick other spans. Labels are computed once here,
from the rendered template, so no later stage has to re-tokenise or guess where the text sits.

Rendering works on strings and tokenises the pieces separately: the system block, the template text
before the user text, the user text, the template text after it (with the generation prompt). Chat
templates put special tokens or newlines at these boundaries, so the concatenation equals tokenising
the whole string (tested for the packaged model). Over-long texts are cut inside the user text, never
in the template: the official code cut the assistant header off long prompts.

User text is literal text (``text_token_ids``): a text that quotes a control token, e.g. ``<|im_end|>``,
gets the ordinary tokens of those characters, so only the chat template writes control tokens and no
text can end its own turn or forge an assistant header before the rationale.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from grace.model.system_prompt import GRACE_SYSTEM_PROMPT  # noqa: F401  (also importable from here, as before 0.2)

_MARKER = "\u2063GRACE_TEXT\u2063"  # invisible separator characters: never inside a real text


class Span(IntEnum):
    """What each token of a rollout sequence is."""

    PAD = 0
    SYSTEM = 1  # the system block, template tokens included
    TEMPLATE = 2  # chat-template tokens around the user text, generation prompt included
    INPUT = 3  # the user's text
    RATIONALE = 4  # generated tokens, EOS included


@dataclass(frozen=True)
class Prompt:
    ids: list[int]  # [P] token ids of the rendered prompt
    spans: list[int]  # [P] Span label of each token
    input_truncated: bool  # the user text was cut to fit max_prompt_tokens


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of user text as literal text: every use of a text's tokens (prompts, token budgets) goes here.

    A special-token string inside the text (``"<|im_end|>"``, ``"<|im_start|>assistant"``) is split into
    ordinary tokens, as the characters they are (transformers' ``split_special_tokens=True``, honoured by
    fast and Python tokenizers), instead of becoming the control token that ends a turn.
    """
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


@dataclass(frozen=True)
class PromptTemplate:
    """The template pieces around the user text, tokenised once per tokenizer and system prompt."""

    system_ids: list[int]
    before_ids: list[int]  # template tokens between the system block and the user text
    after_ids: list[int]  # template tokens after the user text, generation prompt included

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> "PromptTemplate":
        if tokenizer.chat_template is None:
            raise ValueError(
                f"tokenizer of {tokenizer.name_or_path!r} has no chat template: GRACE needs an instruct model"
            )
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": _MARKER}]
        full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, _, after = full.partition(_MARKER)
        system_only = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=False)
        if not before.startswith(system_only):
            # Some templates render a lone system message differently (e.g. no trailing newline);
            # the system block then ends right after the end-of-turn that follows the system prompt.
            end = before.find(system_prompt) + len(system_prompt)
            system_only = before[:end] if end >= len(system_prompt) else ""
        forged = sorted((t for t in tokenizer.all_special_tokens if t in system_prompt), key=system_prompt.find)
        if forged:
            raise ValueError(
                f"the system prompt contains {forged[0]!r}, a control token of {tokenizer.name_or_path!r}: only the "
                "chat template may write control tokens; take it out of the system prompt"
            )
        # The template's own pieces: here, and only here, control-token strings become control tokens.
        encode = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
        return cls(encode(system_only), encode(before[len(system_only) :]), encode(after))

    @property
    def overhead(self) -> int:
        """Prompt tokens that are not user text."""
        return len(self.system_ids) + len(self.before_ids) + len(self.after_ids)


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    template: PromptTemplate,
    max_prompt_tokens: int | None = None,
) -> Prompt:
    """Token ids and span labels for one text; the text is cut (at its end) to fit ``max_prompt_tokens``.

    Surrounding whitespace is stripped: it carries no meaning, and BPE tokenizers merge it with the
    template's newline ("\\n " is one token), which would make the span boundary tokenisation-dependent.
    """
    if not isinstance(text, str):
        raise TypeError(f"a text must be a str, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("cannot embed an empty text")
    text_ids = text_token_ids(tokenizer, text)
    truncated = False
    if max_prompt_tokens is not None:
        budget = max_prompt_tokens - template.overhead
        if budget < 1:
            raise ValueError(
                f"max_prompt_tokens={max_prompt_tokens} leaves no room for text: the chat template and "
                f"system prompt alone take {template.overhead} tokens"
            )
        if len(text_ids) > budget:
            text_ids, truncated = text_ids[:budget], True
    ids = template.system_ids + template.before_ids + text_ids + template.after_ids
    spans = (
        [Span.SYSTEM] * len(template.system_ids)
        + [Span.TEMPLATE] * len(template.before_ids)
        + [Span.INPUT] * len(text_ids)
        + [Span.TEMPLATE] * len(template.after_ids)
    )
    return Prompt(ids, [int(s) for s in spans], truncated)


@dataclass
class PromptBatch:
    """Prompts left-padded to a common length, the layout batched generation needs."""

    input_ids: torch.Tensor  # [B, P] long, pad id on the left
    attention_mask: torch.Tensor  # [B, P] long, 1 for real tokens
    spans: torch.Tensor  # [B, P] long, Span labels (PAD on padding)
    input_truncated: torch.Tensor  # [B] bool

    @classmethod
    def collate(cls, prompts: list[Prompt], pad_id: int) -> "PromptBatch":
        width = max(len(p.ids) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        spans = torch.full((len(prompts), width), int(Span.PAD), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            n = len(prompt.ids)
            ids[row, width - n :] = torch.tensor(prompt.ids)
            mask[row, width - n :] = 1
            spans[row, width - n :] = torch.tensor(prompt.spans)
        truncated = torch.tensor([p.input_truncated for p in prompts], dtype=torch.bool)
        return cls(ids, mask, spans, truncated)
