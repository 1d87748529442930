"""Real corpora extracted at run time from installed packages (no hub, nothing written into the repo).

``wiki_sentences`` reads gensim's shortened English Wikipedia dump
(``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``): of its 206 namespace-0
pages it keeps the 106 that are real articles (not redirects, not empty, no "Wikipedia:" page), turns
their markup into plain text with ``gensim.corpora.wikicorpus.extract_pages`` and ``filter_wiki``,
drops headings, list items, indents and table rows, removes the bold/italic quote markup, splits
paragraphs into sentences at ``.``/``!``/``?`` (not after abbreviations or initials) and keeps a
sentence only if it starts with a capital letter or digit, ends with ``.``, ``!`` or ``?``, has 6 to
60 words, holds no markup leftovers (``[`` ``{`` ``|`` ``=`` ...), no holes left by removed templates
(`` ,`` ``()`` double spaces), no URL, and balanced brackets and quotes; duplicates are dropped and
article order is kept. With the defaults that gives 16,382 sentences (mean 22 words) in about 5 s on
one core (2 s of it importing gensim), cached in memory afterwards. ``lee_background_documents``
returns the 300 news documents of gensim's ``lee_background.cor``, one per line.
``chatterbot_triplets`` turns the chatterbot-corpus question/answer pairs of one split (604 train,
144 eval; see ``chatterbot.py``) into (question, its answer, a seeded random answer from another
category of the same split) triplets.
"""
from __future__ import annotations

import bz2
import random
import re
from functools import lru_cache
from typing import Iterator

from grace.data.chatterbot import chatterbot_split
from grace.data.examples import Triplet

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_BACKGROUND = "lee_background.cor"

# A paragraph starting with one of these is a heading, list item, indent or table row, not prose.
_NON_PROSE_STARTS = tuple("=*#:;|!{}+")
# Characters that only appear in a sentence when markup survived filter_wiki.
_MARKUP = set("[]{}|<>=*#_\\~^@`")
# Traces of templates filter_wiki removed: "from the Greek , i.e.", "()", "is   about 300".
_HOLES = (" ,", " .", " ;", " :", " !", " ?", "( ", " )", "()", "  ", ",,")
# Tokens after which a full stop does not end the sentence.
_ABBREVIATIONS = {
    "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "mt.", "ft.", "jr.", "sr.", "gen.", "col.", "lt.",
    "capt.", "sgt.", "gov.", "sen.", "rep.", "rev.", "hon.", "vs.", "etc.", "e.g.", "i.e.", "cf.",
    "c.", "ca.", "approx.", "no.", "nos.", "vol.", "pp.", "p.", "inc.", "ltd.", "co.", "corp.",
    "al.", "fig.", "jan.", "feb.", "mar.", "apr.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec.",
}
_INITIALS = re.compile(r"(?:[A-Z]\.)+")  # "S." in "Harry S. Truman", "U.S.", "J.R.R."
# A sentence ends at . ! or ? (possibly followed by a closing quote or bracket) before whitespace
# and a capital, digit or opening quote.
_SENTENCE_BREAK = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["')]))\s+(?=["'(]?[A-Z0-9])""")


def wiki_sentences(min_words: int = 6, max_words: int = 60) -> list[str]:
    """Natural English sentences from the shortened Wikipedia dump, in article order.

    Returns a fresh list each call; the extraction itself is cached per (min_words, max_words).
    """
    return list(_wiki_sentences(min_words, max_words))


@lru_cache(maxsize=None)
def _wiki_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
    seen: set[str] = set()
    sentences: list[str] = []
    for _title, text in _wiki_articles():
        for sentence in _prose_sentences(text):
            if sentence not in seen and _looks_like_sentence(sentence, min_words, max_words):
                seen.add(sentence)
                sentences.append(sentence)
    return tuple(sentences)


@lru_cache(maxsize=1)
def _wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, plain text) of every real article: redirects, empty pages and project pages dropped."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    articles: list[tuple[str, str]] = []
    with bz2.open(datapath(WIKI_DUMP), "rb") as handle:
        for title, markup, _page_id in extract_pages(handle, filter_namespaces=("0",)):
            # Old dumps file a few project pages ("Wikipedia:...") under namespace 0.
            if ":" in title or not markup.strip() or markup.lstrip().lower().startswith("#redirect"):
                continue
            articles.append((title, filter_wiki(markup)))
    return tuple(articles)


def _prose_sentences(text: str) -> Iterator[str]:
    """Candidate sentences of the prose paragraphs of one article's plain text."""
    for paragraph in text.split("\n"):
        # filter_wiki keeps the wiki quote markup for bold (''') and italics ('').
        paragraph = paragraph.replace("'''", "").replace("''", "").strip()
        if paragraph and not paragraph.startswith(_NON_PROSE_STARTS):
            yield from split_sentences(paragraph)


def split_sentences(paragraph: str) -> list[str]:
    """Split at sentence-final punctuation, but not after abbreviations ("Dr.") or initials ("S.")."""
    sentences: list[str] = []
    for piece in _SENTENCE_BREAK.split(paragraph):
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _ends_with_abbreviation(text: str) -> bool:
    last_word = text.rsplit(maxsplit=1)[-1].lstrip("(\"'")
    return last_word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(last_word) is not None


def _looks_like_sentence(sentence: str, min_words: int, max_words: int) -> bool:
    return (
        (sentence[0].isupper() or sentence[0].isdigit())
        and sentence[-1] in ".!?"
        and min_words <= len(sentence.split()) <= max_words
        and not any(char in _MARKUP for char in sentence)
        and not any(hole in sentence for hole in _HOLES)
        and "http" not in sentence
        and sentence.count("(") == sentence.count(")")
        and sentence.count('"') % 2 == 0
    )


@lru_cache(maxsize=1)
def _lee_background() -> tuple[str, ...]:
    from gensim.test.utils import datapath

    with open(datapath(LEE_BACKGROUND), encoding="utf-8") as handle:
        return tuple(line.strip() for line in handle if line.strip())


def lee_background_documents() -> list[str]:
    """The 300 news documents of gensim's ``lee_background.cor`` (one document per line), in file order."""
    return list(_lee_background())


def chatterbot_triplets(split: str = "train", seed: int = 0) -> list[Triplet]:
    """(question, its answer, an answer from another category) for every pair of one split.

    The negative comes from a different category of the *same* split, so the training triplets never
    see a held-out category; it is never textually equal to the positive. Same seed, same triplets.
    """
    pairs = chatterbot_split(split)
    rng = random.Random(seed)
    triplets: list[Triplet] = []
    for pair in pairs:
        candidates = [
            other.answer
            for other in pairs
            if other.category != pair.category and other.answer.lower() != pair.answer.lower()
        ]
        triplets.append(
            Triplet(
                query=pair.question,
                positive=pair.answer,
                negative=rng.choice(candidates),
                origin=f"packaged:chatterbot:{pair.origin}",
            )
        )
    return triplets
