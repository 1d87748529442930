"""Built-in component ``degenerate``: a penalty for rationales that game the reward without saying anything.

Three parts, each in [0, 1] and weighted by its parameter, summed and negated::

    value_i = -(repetition * r_i + empty * e_i + copy * c_i)

* ``r_i``: share of the rationale's token n-grams that repeat an earlier one (``repeated_ngram_fraction``);
  a rationale stuck in a loop ("the text the text the text") nears 1;
* ``e_i``: 1 when the rationale has fewer than ``min_words`` words (empty or near-empty), else 0;
* ``c_i``: share of the rationale's word n-grams that occur in its input text (``copied_fraction``); a
  rationale that copies its input is 1, a paraphrase near 0.

Each part is logged as ``reward/degenerate_<part>_*`` (before the part weights). The measures are pure
functions shared with the guards (``grace.training.guards``), which watch the repetition rate during training.
"""
from __future__ import annotations

import re
from typing import Hashable, Sequence

import torch

from grace.rewards.types import ComponentValue, RewardInputs

_WORD = re.compile(r"\w+")


def repeated_ngram_fraction(tokens: Sequence[Hashable], n: int = 3) -> float:
    """Share of the ``len(tokens) - n + 1`` n-grams of ``tokens`` (ids or words) that repeat an earlier one;
    0 when there are none."""
    count = len(tokens) - n + 1
    if count <= 0:
        return 0.0
    grams = {tuple(tokens[i : i + n]) for i in range(count)}
    return 1.0 - len(grams) / count


def repetition_rates(ids: torch.Tensor, mask: torch.Tensor, n: int = 3) -> torch.Tensor:
    """[R] float32 ``repeated_ngram_fraction`` of each row of ``ids`` [R, T] over its ``mask`` [R, T]."""
    rows = [row[keep].tolist() for row, keep in zip(ids.cpu(), mask.cpu())]
    return torch.tensor([repeated_ngram_fraction(row, n) for row in rows], dtype=torch.float32)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def copied_fraction(rationale: str, text: str, n: int = 3) -> float:
    """Share of the rationale's word n-grams (lower-cased) that also occur in ``text``; 0 for fewer than n words."""
    mine, theirs = words(rationale), words(text)
    grams = [tuple(mine[i : i + n]) for i in range(len(mine) - n + 1)]
    if not grams:
        return 0.0
    source = {tuple(theirs[i : i + n]) for i in range(len(theirs) - n + 1)}
    return sum(gram in source for gram in grams) / len(grams)


def degenerate_penalty(
    inputs: RewardInputs,
    *,
    ngram: int = 3,
    min_words: int = 3,
    repetition: float = 1.0,
    empty: float = 1.0,
    copy: float = 1.0,
) -> ComponentValue:
    """[R] float32 in [-(repetition + empty + copy), 0]; see the module docstring."""
    if ngram < 1 or min_words < 0:
        raise ValueError(f"params.ngram={ngram} must be >= 1 and params.min_words={min_words} >= 0")
    device = inputs.embeddings.device
    rationales = inputs.rationales
    repeated = repetition_rates(inputs.rationale_ids, inputs.rationale_mask, ngram).to(device)
    near_empty = torch.tensor([float(len(words(r)) < min_words) for r in rationales], device=device)
    copied = torch.tensor([copied_fraction(r, t, ngram) for r, t in zip(rationales, inputs.texts)], device=device)
    parts = {"degenerate_repetition": -repeated, "degenerate_empty": -near_empty, "degenerate_copy": -copied}
    return ComponentValue(repetition * parts["degenerate_repetition"] + empty * parts["degenerate_empty"] + copy * parts["degenerate_copy"], parts)
