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
    origin: str  # "<file>:<line>", the line of the question in the YAML file, for error messages and provenance


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
        for line, conversation in _conversations(path):
            if not isinstance(conversation, list) or len(conversation) < 2:
                continue
            question, answer = str(conversation[0]).strip(), str(conversation[1]).strip()
            key = question.lower()
            if not question or not answer or key in seen:
                continue
            seen.add(key)
            pairs.append(QAPair(question, answer, path.stem, f"{path.name}:{line}"))
    return tuple(pairs)


def _conversations(path: Path) -> list[tuple[int, object]]:
    """(1-based line where it starts, value) of every conversation of one category file.

    Composed to a node tree first, because only nodes know their line; the values are then built exactly
    as ``yaml.safe_load`` builds them ("yes" still becomes True, and str() of it "True", as before).
    """
    root = yaml.compose(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(root, yaml.MappingNode):
        return []
    nodes = {key.value: value for key, value in root.value}.get("conversations")
    if not isinstance(nodes, yaml.SequenceNode):
        return []
    constructor = yaml.SafeLoader("")
    return [(node.start_mark.line + 1, constructor.construct_document(node)) for node in nodes.value]


def chatterbot_split(split: str) -> tuple[QAPair, ...]:
    """``"train"``: pairs of the training categories; ``"eval"``: pairs of ``HELD_OUT_CATEGORIES``."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown chatterbot split {split!r}: use 'train' or 'eval'")
    held_out = split == "eval"
    return tuple(p for p in load_chatterbot_pairs() if (p.category in HELD_OUT_CATEGORIES) == held_out)
