"""Does the rationale carry the signal? The share of a similarity its rationale tokens carry, over a corpus.

For one pair, ``SimilarityExplanation.rationale_share`` is the fraction of cos(a, b) that rationale tokens
add, exactly (``grace.embedding.attribution``). Over a set of pairs this module reports its mean for related
and for unrelated pairs, for any encoder (base or trained) that writes rationales:

* STS pairs (``sts_rationale_share``): related = human rating above the median of the pairs given,
  unrelated = at or below it;
* retrieval (``retrieval_rationale_share``): each query with its relevant document (related) and with the
  best-scoring irrelevant document of the corpus (unrelated: the one that competes with the answer).

A rationale that carries the signal has a larger share of related pairs' similarity than of unrelated
ones' (``difference`` > 0); a share that is the same for both says the rationale adds similarity to every
pair alike, i.e. it is a shared offset that ranking ignores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from grace.embedding.attribution import SimilarityExplanation
from grace.embedding.token_states import TokenStates, explain_states, token_states

if TYPE_CHECKING:
    from grace.embedding.encoder import GraceEncoder


@dataclass
class ShareSummary:
    """Rationale shares of a set of related and a set of unrelated pairs."""

    name: str  # what was measured, e.g. "GraceLeeSTS"
    related: np.ndarray  # [P_r] float64, rationale share of the cosine of each related pair
    unrelated: np.ndarray  # [P_u] float64, the same for unrelated pairs
    related_cosine: np.ndarray  # [P_r] float64, the cosines themselves
    unrelated_cosine: np.ndarray  # [P_u] float64

    @property
    def related_mean(self) -> float:
        return float(self.related.mean()) if self.related.size else float("nan")

    @property
    def unrelated_mean(self) -> float:
        return float(self.unrelated.mean()) if self.unrelated.size else float("nan")

    @property
    def difference(self) -> float:
        """Mean share of related pairs minus that of unrelated ones (> 0: the rationale carries the signal)."""
        return self.related_mean - self.unrelated_mean

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "pairs_related": int(self.related.size),
            "pairs_unrelated": int(self.unrelated.size),
            "share_related": self.related_mean,
            "share_unrelated": self.unrelated_mean,
            "share_difference": self.difference,
            "cosine_related": float(self.related_cosine.mean()) if self.related_cosine.size else float("nan"),
            "cosine_unrelated": float(self.unrelated_cosine.mean()) if self.unrelated_cosine.size else float("nan"),
        }


def check_writes_rationales(encoder: GraceEncoder, roles: Sequence[str], **overrides) -> None:
    """ValueError when a role embeds without a rationale: its share is 0 by construction, nothing to measure."""
    for role in roles:
        if not encoder.config_for(role, **overrides).rationale:
            raise ValueError(
                f"encoder {encoder.name!r} embeds {role} texts without a rationale (rationale=False in its settings): "
                "the rationale share is 0 by construction; measure an encoder that writes rationales"
            )


def role_states(encoder: GraceEncoder, texts: list[str], role: str, **overrides) -> dict[str, TokenStates]:
    """Text -> ``TokenStates`` of each distinct text, embedded with ``role``'s settings as ``encode`` would."""
    config = encoder.config_for(role, **overrides)
    unique = list(dict.fromkeys(texts))
    states = token_states(
        encoder.model, encoder.tokenizer, unique, config, encoder._template(config.system_prompt),
        batch_size=encoder.batch_size, options=encoder.generation,
    )  # fmt: skip
    return dict(zip(unique, states))


def explain_pairs(
    encoder: GraceEncoder,
    pairs: Sequence[tuple[str, str]],
    *,
    role_a: str = "document",
    role_b: str = "document",
    top_pairs: int = 0,
    **overrides,
) -> list[SimilarityExplanation]:
    """One explanation per (a, b) pair; every distinct text is generated once, however many pairs hold it."""
    if not pairs:
        return []
    pooling = encoder.config_for(role_a, **overrides).pooling
    if encoder.config_for(role_b, **overrides).pooling != pooling:
        raise ValueError(f"role_a={role_a!r} and role_b={role_b!r} pool differently: their tokens cannot be compared")
    if role_a == role_b:  # one generation for every distinct text
        left = right = role_states(encoder, [text for pair in pairs for text in pair], role_a, **overrides)
    else:
        left = role_states(encoder, [a for a, _ in pairs], role_a, **overrides)
        right = role_states(encoder, [b for _, b in pairs], role_b, **overrides)
    return [explain_states(left[a], right[b], pooling, top_pairs=top_pairs) for a, b in pairs]


def summarise(name: str, explanations: Sequence[SimilarityExplanation], related: Sequence[bool]) -> ShareSummary:
    """``ShareSummary`` of ``explanations`` split by the ``related`` flags ([P] each; ValueError when they differ)."""
    if len(explanations) != len(related):
        raise ValueError(f"{len(explanations)} explanations but {len(related)} related flags")
    flags = np.asarray(related, dtype=bool)
    shares = np.array([e.rationale_share for e in explanations], dtype=np.float64)
    cosines = np.array([e.cosine for e in explanations], dtype=np.float64)
    return ShareSummary(name, shares[flags], shares[~flags], cosines[flags], cosines[~flags])


def sts_rationale_share(
    encoder: GraceEncoder,
    sentence1: Sequence[str],
    sentence2: Sequence[str],
    scores: Sequence[float],
    *,
    name: str = "sts",
    **overrides,
) -> ShareSummary:
    """Mean rationale share of STS pairs rated above the median (related) and at or below it (unrelated).

    Both sides are embedded as documents (symmetric similarity). Raises ValueError when the three sequences
    differ in length or are empty, or when the encoder writes no rationale.
    """
    if not (len(sentence1) == len(sentence2) == len(scores)) or not len(scores):
        raise ValueError(f"sentence1, sentence2 and scores need the same non-zero length, got {len(sentence1)}, {len(sentence2)}, {len(scores)}")
    check_writes_rationales(encoder, ["document"], **overrides)
    explained = explain_pairs(encoder, list(zip(sentence1, sentence2)), **overrides)
    median = float(np.median(np.asarray(scores, dtype=np.float64)))
    return summarise(name, explained, [float(s) > median for s in scores])


def retrieval_pairs(
    encoder: GraceEncoder, queries: dict[str, str], corpus: dict[str, str], qrels: dict[str, dict[str, int]], **overrides
) -> tuple[list[tuple[str, str]], list[bool]]:
    """For each query: (query, each relevant document) flagged related, and (query, its best-scoring irrelevant
    document by the encoder's cosine) flagged unrelated. Raises ValueError for a query without judgements or a
    judged document missing from ``corpus``."""
    ids = list(corpus)
    documents = encoder.encode([corpus[i] for i in ids], role="document", **overrides)  # [D, H]
    asked = list(queries)
    vectors = encoder.encode([queries[q] for q in asked], role="query", **overrides)  # [Q, H]
    scores = vectors @ documents.T  # [Q, D]
    position = {doc: column for column, doc in enumerate(ids)}
    pairs: list[tuple[str, str]] = []
    related: list[bool] = []
    for row, query in enumerate(asked):
        relevant = {doc for doc, grade in qrels.get(query, {}).items() if grade > 0}
        if not relevant:
            raise ValueError(f"query {query!r} has no relevant document in qrels")
        unknown = sorted(relevant - position.keys())
        if unknown:
            raise ValueError(f"query {query!r}: relevant document {unknown[0]!r} is not in the corpus")
        order = np.argsort(-scores[row])
        rival = next((ids[c] for c in order if ids[c] not in relevant), None)
        pairs += [(queries[query], corpus[doc]) for doc in sorted(relevant)]
        related += [True] * len(relevant)
        if rival is not None:
            pairs.append((queries[query], corpus[rival]))
            related.append(False)
    return pairs, related


def retrieval_rationale_share(
    encoder: GraceEncoder,
    queries: dict[str, str],
    corpus: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    name: str = "retrieval",
    **overrides,
) -> ShareSummary:
    """Mean rationale share of query-relevant pairs (related) and query-best-irrelevant pairs (unrelated);
    queries embedded with the query settings, documents with the document settings, as in retrieval."""
    if not queries:
        raise ValueError("queries is empty: nothing to measure")
    check_writes_rationales(encoder, ["query", "document"], **overrides)
    pairs, related = retrieval_pairs(encoder, queries, corpus, qrels, **overrides)
    explained = explain_pairs(encoder, pairs, role_a="query", role_b="document", **overrides)
    return summarise(name, explained, related)
