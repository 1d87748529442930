"""GRACE's data layer: example types, checked readers for every source form, packaged real corpora."""
from grace.data.chatterbot import HELD_OUT_CATEGORIES, QAPair, chatterbot_split, load_chatterbot_pairs
from grace.data.errors import DataError, DataIssue
from grace.data.examples import Demonstration, Example, Sentence, Triplet
from grace.data.packaged import chatterbot_triplets, lee_background_documents, wiki_sentences
from grace.data.readers import LoadedData, load_examples

__all__ = [
    "HELD_OUT_CATEGORIES",
    "DataError",
    "DataIssue",
    "Demonstration",
    "Example",
    "LoadedData",
    "QAPair",
    "Sentence",
    "Triplet",
    "chatterbot_split",
    "chatterbot_triplets",
    "lee_background_documents",
    "load_chatterbot_pairs",
    "load_examples",
    "wiki_sentences",
]
