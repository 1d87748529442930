"""The pooled tokens behind embeddings, from the generation that made them: the input of every explanation.

``token_states`` runs the very rollout ``grace.embedding.pipeline.embed`` runs (``rollout_texts``: same
prompt, same seeds, same decoding), keeps its embedding and rationale, then reads the per-token last-layer
hidden states of each generated sequence with one forward pass over its token ids (no decode and
re-tokenise: the ids are the generation's). ``explain_similarity`` turns two texts' states into a
``grace.embedding.attribution.SimilarityExplanation``; ``GraceEncoder.explain_similarity`` calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.embedding.attribution import PooledTokens, SimilarityExplanation, explain_pair, pooled_tokens
from grace.embedding.pipeline import EmbeddingConfig, _decode_rationales, rollout_texts
from grace.embedding.texts import check_not_empty, text_batch
from grace.generation.options import GenerationOptions
from grace.model.forward import decoder_forward, position_ids
from grace.model.pooling import pooling_mask
from grace.model.prompts import PromptTemplate, text_token_ids

if TYPE_CHECKING:
    from grace.embedding.encoder import GraceEncoder


@dataclass
class TokenStates:
    """One text's embedding, as the generation pooled it, and the pooled tokens it is the weighted sum of."""

    text: str
    tokens: PooledTokens  # n pooled tokens: hidden [n, H], weights [n], spans [n]
    pieces: list[str]  # [n] readable text of each pooled token
    embedding: torch.Tensor  # [H] float32, L2-normalised: the generation's embedding, what encode returns
    rationale: str  # "" without a rationale
    truncated: bool  # the rationale hit its length limit
    input_truncated: bool  # the text was cut to the prompt budget


@torch.no_grad()
def token_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    config: EmbeddingConfig,
    template: PromptTemplate,
    *,
    batch_size: int = 16,
    options: GenerationOptions = GenerationOptions(),
) -> list[TokenStates]:
    """The ``TokenStates`` of each text of ``texts`` (in order; identical texts computed once).

    Raises ValueError for an empty text (naming its index) and for ``num_samples > 1``: an embedding
    averaged over several sampled rationales is not one sequence of tokens to explain.
    """
    check_not_empty(texts)
    if config.decoding.num_samples != 1:
        raise ValueError(
            f"num_samples={config.decoding.num_samples}: an explanation reads one rationale per text; "
            "explain with num_samples=1 (the default)"
        )
    unique = list(dict.fromkeys(texts))
    found: dict[str, TokenStates] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        batch = rollout_texts(model, tokenizer, chunk, config, template, batch_size=batch_size, options=options)
        rationales = _decode_rationales(tokenizer, batch.rationale_ids, batch.rationale_mask)
        for row, text in enumerate(chunk):
            real = batch.attention_mask[row].bool()
            ids, spans = batch.sequence_ids[row][real], batch.spans[row][real]
            # One forward over the row's own tokens, unpadded: the hidden states generation pooled on the fly.
            mask = torch.ones_like(ids).unsqueeze(0)
            hidden, _ = decoder_forward(model, ids.unsqueeze(0), mask, position_ids(mask))
            tokens = pooled_tokens(hidden[0], spans, config.pooling)
            pooled_ids = ids[pooling_mask(spans.unsqueeze(0), config.pooling)[0]].tolist()
            found[text] = TokenStates(
                text=text,
                tokens=tokens,
                pieces=token_pieces(tokenizer, pooled_ids),
                embedding=batch.embeddings[row].float().cpu(),
                rationale=rationales[row],
                truncated=bool(batch.truncated[row]),
                input_truncated=bool(batch.input_truncated[row]),
            )
    return [found[text] for text in texts]


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """[n] the text each token adds, read off growing prefixes: a character split over several byte-level
    tokens (an emoji, an accent) shows on the token that completes it rather than as U+FFFD on each."""
    pieces: list[str] = []
    shown = ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], clean_up_tokenization_spaces=False).rstrip("\ufffd")
        if text.startswith(shown):
            pieces.append(text[len(shown) :])
            shown = text
        else:  # a tokenizer whose decoding of a prefix is not a prefix: fall back to the token alone
            pieces.append(tokenizer.decode([ids[end - 1]], clean_up_tokenization_spaces=False))
            shown = text
    return pieces


def prompt_budget_check(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], names: list[str], config: EmbeddingConfig, template: PromptTemplate
) -> None:
    """ValueError naming text i by ``names[i]`` when it is longer than the prompt budget (its embedding would see a cut text)."""
    budget = config.max_prompt_tokens - template.overhead
    for name, text in zip(names, texts):
        length = len(text_token_ids(tokenizer, text.strip()))
        if length > budget:
            raise ValueError(
                f"{name} is {length} tokens, over the prompt budget of {budget} (max_prompt_tokens="
                f"{config.max_prompt_tokens} less {template.overhead} template tokens): its embedding would see only "
                "its first tokens; shorten it, raise max_prompt_tokens, or pass allow_truncated=True"
            )


def explain_similarity(
    encoder: GraceEncoder,
    a: str,
    b: str | list[str],
    *,
    role_a: str = "document",
    role_b: str = "document",
    top_pairs: int = 0,
    allow_truncated: bool = False,
    **overrides,
) -> SimilarityExplanation | list[SimilarityExplanation]:
    """``GraceEncoder.explain_similarity``: text ``a`` against ``b`` (one text, or several: one explanation each).

    Each side is embedded with its role's settings (``encoder.config_for(role, **overrides)``), as ``encode``
    would. Raises TypeError when ``a`` is not one str or ``b`` not text, ValueError for an empty text, an
    unknown role, two roles pooled differently, a text over the prompt budget (unless ``allow_truncated``),
    or ``num_samples > 1``; each message names the argument.
    """
    if not isinstance(a, str):
        raise TypeError(f"a must be one str (the text explained against b), got {type(a).__name__}")
    others, one = text_batch(b, name="b")
    if not others:
        raise ValueError("b is empty: give one text or a list of texts to explain a against")
    check_not_empty([a], "a")
    check_not_empty(others, "b")
    configs = {}
    for name, role in (("role_a", role_a), ("role_b", role_b)):
        try:
            configs[name] = encoder.config_for(role, **overrides)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    config_a, config_b = configs["role_a"], configs["role_b"]
    if config_a.pooling != config_b.pooling:
        raise ValueError(
            f"role_a={role_a!r} pools with {config_a.pooling!r} and role_b={role_b!r} with {config_b.pooling!r}: "
            "a token-level explanation needs both embeddings pooled the same way"
        )
    template_a, template_b = encoder._template(config_a.system_prompt), encoder._template(config_b.system_prompt)
    if not allow_truncated:
        prompt_budget_check(encoder.tokenizer, [a], ["a"], config_a, template_a)
        names = ["b"] if one else [f"b[{index}]" for index in range(len(others))]
        prompt_budget_check(encoder.tokenizer, others, names, config_b, template_b)
    run = dict(batch_size=encoder.batch_size, options=encoder.generation)
    if config_a == config_b:  # one rollout for both sides
        states = token_states(encoder.model, encoder.tokenizer, [a, *others], config_a, template_a, **run)
        left, rights = states[0], states[1:]
    else:
        (left,) = token_states(encoder.model, encoder.tokenizer, [a], config_a, template_a, **run)
        rights = token_states(encoder.model, encoder.tokenizer, others, config_b, template_b, **run)
    explained = [explain_states(left, right, config_a.pooling, top_pairs=top_pairs) for right in rights]
    return explained[0] if one else explained


def explain_states(a: TokenStates, b: TokenStates, pooling: str, *, top_pairs: int = 0) -> SimilarityExplanation:
    """The explanation of two texts' ``TokenStates`` (cheap: a few products of their pooled hidden states)."""
    return explain_pair(
        a.tokens,
        b.tokens,
        pooling,
        pieces=(a.pieces, b.pieces),
        texts=(a.text, b.text),
        rationales=(a.rationale, b.rationale),
        truncated=(a.truncated, b.truncated),
        input_truncated=(a.input_truncated, b.input_truncated),
        top_pairs=top_pairs,
    )
