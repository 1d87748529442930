"""The kinds of training example GRACE reads.

Supervised training contrasts a query with a positive and a negative text; unsupervised training
(SimCSE-style) only needs single texts; supervised fine-tuning (``objective=sft``) reads a text with the
rationale the policy should write for it. ``origin`` says where an example came from
("train.jsonl:12", "packaged:chatterbot:trivia.yml:3") so that a bad rationale or reward can be traced
back to the line that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Triplet:
    """A supervised example: ``positive`` should embed closer to ``query`` than ``negative`` does."""

    query: str
    positive: str
    negative: str
    origin: str = ""


@dataclass(frozen=True)
class Sentence:
    """An unsupervised example: one text."""

    text: str
    origin: str = ""


@dataclass(frozen=True)
class Demonstration:
    """A supervised fine-tuning example: the policy should write ``rationale`` for ``text``."""

    text: str
    rationale: str
    origin: str = ""


Example = Triplet | Sentence | Demonstration
