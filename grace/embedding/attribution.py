"""Exact token-level attribution of a GRACE cosine similarity: which pooled tokens made two texts close.

Every pooling method makes an embedding that is a weighted sum of the pooled tokens' last-layer hidden
states, e = sum_i w_i h_i:

* mean pooling (``after_system``, ``input``, ``rationale``): e = mu / |mu| with mu = (1/n) sum_i h_i, so
  every token has the weight w_i = 1 / (n |mu|);
* ``last_token``: one token, e = h / |h|, so w = 1 / |h|.

Cosine similarity is then linear in each side's tokens (the derivation of issue 21, from the pooling of
``grace.model.pooling``):

    cos(a, b) = e_a . e_b = sum_i w_i (h_i . e_b)                   token i of a contributes w_i (h_i . e_b)
              = sum_j w_j (h_j . e_a)                               token j of b contributes w_j (h_j . e_a)
              = sum_ij w_i w_j (h_i . h_j)                          the pair (i, j) contributes w_i w_j (h_i . h_j)

Each set of contributions adds up to the cosine exactly (up to float32 rounding): nothing is approximated,
no gradient or baseline is involved. ``explain_pair`` averages the two sides' decompositions for the split
of the cosine between input, template and rationale tokens; that average still adds up to the cosine.

Pure torch on hidden states and span labels: no model, no tokenizer (``grace.embedding.token_states``
produces the inputs from a model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grace.model.pooling import check_pooling, pooling_mask
from grace.model.prompts import Span

# The parts of a pooled sequence a cosine is split into (the system block is never pooled).
PARTS: dict[str, Span] = {"input": Span.INPUT, "template": Span.TEMPLATE, "rationale": Span.RATIONALE}


@dataclass
class PooledTokens:
    """The n pooled tokens of one embedding and the weights that make it: embedding = sum_i weights_i hidden_i."""

    hidden: torch.Tensor  # [n, H] float32, last-layer hidden states (after the final norm)
    weights: torch.Tensor  # [n] float32, 1 / (n |mu|) for mean pooling, 1 / |h| for last_token
    spans: torch.Tensor  # [n] long, Span label of each token

    @property
    def embedding(self) -> torch.Tensor:  # [H] float32, L2-normalised
        return (self.weights.unsqueeze(-1) * self.hidden).sum(dim=0)

    def __len__(self) -> int:
        return self.hidden.shape[0]


def pooled_tokens(hidden: torch.Tensor, spans: torch.Tensor, pooling: str) -> PooledTokens:
    """The pooled tokens of one sequence: ``hidden`` [T, H] last-layer states, ``spans`` [T] Span labels.

    Selects tokens with ``grace.model.pooling.pooling_mask``, the mask ``pool_hidden`` averages over, so
    ``pooled_tokens(h, s, m).embedding`` equals ``pool_hidden(h[None], s[None], m)[0]``. Raises ValueError
    for an unknown ``pooling``, mismatched shapes, or a sequence with no token to pool.
    """
    check_pooling(pooling)
    if hidden.dim() != 2 or spans.dim() != 1 or hidden.shape[0] != spans.shape[0]:
        raise ValueError(f"hidden must be [T, H] and spans [T], got {tuple(hidden.shape)} and {tuple(spans.shape)}")
    mask = pooling_mask(spans.unsqueeze(0), pooling)[0]
    states = hidden[mask].float()
    if states.shape[0] == 0:
        raise ValueError(f"no token to pool with pooling={pooling!r} (e.g. pooling='rationale' without a rationale)")
    if pooling == "last_token":
        weights = 1.0 / states.norm(dim=-1)
    else:
        mean = states.mean(dim=0)
        weights = torch.full((states.shape[0],), 1.0, dtype=torch.float32) / (states.shape[0] * mean.norm())
    return PooledTokens(states, weights.to(states.device), spans[mask].long())


def token_contributions(tokens: PooledTokens, other: torch.Tensor) -> torch.Tensor:
    """[n] float32: token i's share w_i (h_i . e_other) of cos(e, ``other``) ([H], L2-normalised); sums to the cosine."""
    return tokens.weights * (tokens.hidden @ other.float())


def pair_contributions(a: PooledTokens, b: PooledTokens) -> torch.Tensor:
    """[n, m] float32: w_i w_j (h_i . h_j) for token i of ``a`` and j of ``b``; sums to cos(a, b)."""
    return a.weights.unsqueeze(1) * (a.hidden @ b.hidden.T) * b.weights.unsqueeze(0)


def part_sums(contributions: torch.Tensor, spans: torch.Tensor) -> dict[str, float]:
    """``{"input", "template", "rationale"}`` -> sum of the ``contributions`` [n] of tokens of that part (``spans`` [n])."""
    return {name: float(contributions[spans == int(span)].sum()) for name, span in PARTS.items()}


@dataclass
class TokenPair:
    """One token of side a and one of side b, and what their pair adds to the cosine."""

    a: int  # index into SideExplanation.pieces of side a
    b: int  # index into side b's pieces
    contribution: float  # w_a w_b (h_a . h_b), in cosine units


@dataclass
class SideExplanation:
    """One side of an explained similarity: its pooled tokens, readable, and what each adds to the cosine."""

    text: str  # the input text as given
    rationale: str  # the rationale behind its embedding ("" without one)
    pieces: list[str]  # [n] readable text of each pooled token
    spans: list[str]  # [n] "input", "template" or "rationale"
    contributions: torch.Tensor  # [n] float32, token i's share of the cosine; sums to the cosine
    truncated: bool = False  # the rationale hit its length limit
    input_truncated: bool = False  # the text was cut to the prompt budget (only with allow_truncated=True)

    def parts(self) -> dict[str, float]:
        """What this side's input, template and rationale tokens add to the cosine (sums to it)."""
        labels = torch.tensor([int(PARTS[s]) for s in self.spans], dtype=torch.long)
        return part_sums(self.contributions, labels)

    def strongest(self, k: int, parts: tuple[str, ...] = tuple(PARTS)) -> list[int]:
        """Indices of the ``k`` tokens of ``parts`` that add most to the cosine, largest first."""
        among = [i for i, span in enumerate(self.spans) if span in parts]
        k = min(k, len(among))
        if k <= 0:
            return []
        best = torch.topk(self.contributions[among], k).indices.tolist()
        return [among[i] for i in best]


@dataclass
class SimilarityExplanation:
    """Why two texts are as close as they are: cos(a, b) split exactly over each side's pooled tokens."""

    a: SideExplanation
    b: SideExplanation
    cosine: float  # e_a . e_b from the pooled tokens; equals the sum of either side's contributions
    pooling: str  # the pooling method both embeddings used
    top_pairs: list[TokenPair] = field(default_factory=list)  # largest pair contributions, largest first

    def parts(self) -> dict[str, float]:
        """The cosine split into input, template and rationale: the mean of the two sides' splits (sums to it)."""
        a, b = self.a.parts(), self.b.parts()
        return {name: (a[name] + b[name]) / 2 for name in PARTS}

    def shares(self) -> dict[str, float]:
        """``parts()`` as fractions of the cosine (they sum to 1; NaN when the cosine is 0). A part can exceed 1
        or be negative when another part pulls the texts apart."""
        parts = self.parts()
        return {name: (value / self.cosine if self.cosine != 0 else float("nan")) for name, value in parts.items()}

    @property
    def rationale_share(self) -> float:
        """The fraction of the cosine carried by rationale tokens (0 for embeddings without a rationale)."""
        return self.shares()["rationale"]


def explain_pair(
    a: PooledTokens,
    b: PooledTokens,
    pooling: str,
    *,
    pieces: tuple[list[str], list[str]],
    texts: tuple[str, str] = ("", ""),
    rationales: tuple[str, str] = ("", ""),
    truncated: tuple[bool, bool] = (False, False),
    input_truncated: tuple[bool, bool] = (False, False),
    top_pairs: int = 0,
) -> SimilarityExplanation:
    """Explain cos(a, b) token by token. ``pieces``: the readable text of each side's pooled tokens ([n], [m]).

    ``top_pairs``: also keep the k token pairs (i, j) whose w_i w_j (h_i . h_j) is largest. Raises
    ValueError when a side's pieces do not match its token count or ``top_pairs`` is negative.
    """
    for side, tokens, names in (("a", a, pieces[0]), ("b", b, pieces[1])):
        if len(names) != len(tokens):
            raise ValueError(f"side {side}: {len(names)} pieces for {len(tokens)} pooled tokens")
    if top_pairs < 0:
        raise ValueError(f"top_pairs must be >= 0, got {top_pairs}")
    e_a, e_b = a.embedding, b.embedding
    from_a, from_b = token_contributions(a, e_b), token_contributions(b, e_a)
    cosine = float(from_a.sum())
    pairs: list[TokenPair] = []
    if top_pairs:
        matrix = pair_contributions(a, b)  # [n, m]
        values, flat = torch.topk(matrix.flatten(), min(top_pairs, matrix.numel()))
        m = matrix.shape[1]
        pairs = [TokenPair(int(i) // m, int(i) % m, float(v)) for v, i in zip(values, flat)]
    names = {int(span): name for name, span in PARTS.items()}

    def side(index: int, tokens: PooledTokens, contributions: torch.Tensor) -> SideExplanation:
        return SideExplanation(
            text=texts[index],
            rationale=rationales[index],
            pieces=list(pieces[index]),
            spans=[names[int(s)] for s in tokens.spans],
            contributions=contributions.detach().cpu(),
            truncated=truncated[index],
            input_truncated=input_truncated[index],
        )

    return SimilarityExplanation(side(0, a, from_a), side(1, b, from_b), cosine, pooling, pairs)
