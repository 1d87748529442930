"""Question/answer pairs from the chatterbot-corpus package, with a fixed evaluation split.

The corpus ships as YAML files, one per category, each holding conversations (lists of utterances).
We take the first two utterances of every conversation as a (question, answer) pair, drop empty ones
and de-duplicate questions case-insensitively across the whole corpus (the first occurrence wins,
categories read in sorted order) so a question can never sit on both sides of the split.

The categories in ``HELD_OUT_CATEGORIES`` are reserved for evaluation (the offline retrieval task);
training data is built from the others only. The split is fixed: changing it invalidates every
published number of the offline suite.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

# 144 of the 748 de-duplicated pairs: topics the training categories barely touch.
HELD_OUT_CATEGORIES: tuple[str, ...] = ("history", "literature", "psychology", "science", "sports")


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    category: str  # file stem, e.g. "trivia"
    origin: str  # "<file>:<conversation index>" for error messages and provenance


def corpus_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("chatterbot-corpus is not installed: pip install chatterbot-corpus==1.3.3")
    return Path(spec.submodule_search_locations[0]) / "data" / "english"


@lru_cache(maxsize=1)
def load_chatterbot_pairs() -> tuple[QAPair, ...]:
    """All de-duplicated English question/answer pairs, in a fixed order."""
    pairs: list[QAPair] = []
    seen: set[str] = set()
    for path in sorted(corpus_dir().glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for index, conversation in enumerate(document.get("conversations") or []):
            if not isinstance(conversation, list) or len(conversation) < 2:
                continue
            question, answer = str(conversation[0]).strip(), str(conversation[1]).strip()
            key = question.lower()
            if not question or not answer or key in seen:
                continue
            seen.add(key)
            pairs.append(QAPair(question, answer, path.stem, f"{path.name}:{index}"))
    return tuple(pairs)


def chatterbot_split(split: str) -> tuple[QAPair, ...]:
    """``"train"``: pairs of the training categories; ``"eval"``: pairs of ``HELD_OUT_CATEGORIES``."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown chatterbot split {split!r}: use 'train' or 'eval'")
    held_out = split == "eval"
    return tuple(p for p in load_chatterbot_pairs() if (p.category in HELD_OUT_CATEGORIES) == held_out)
