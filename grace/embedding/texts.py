"""What every public function that takes texts accepts: one rule, in one place.

The habits of sentence-transformers:

* a ``str`` is ONE text, and the answer is for one text: ``encode("a text")`` returns a 1-D ``[H]``
  vector, ``explain("a text")`` one rationale string, ``search(encoder, "a query")`` one result;
* a list, tuple or other ordered iterable of ``str`` (a numpy array of strings, a pandas Series, a
  generator) is a batch, and the answer is a batch in the same order (``[N, H]``, a list of rationales);
* anything else is a ``TypeError`` that says what was passed: ``bytes`` (decode them first), ``None``, a
  number, a dict or set (no defined order), or a batch holding a non-string item (its position is named).

A text must also have content: ``check_not_empty`` refuses an empty or blank one with a ``ValueError``
naming its index, before anything is embedded (the functions that embed call it; an index names its
documents by id instead).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Any, Union

Texts = Union[str, Iterable[str]]  # one text, or a batch of them

_BYTES = (bytes, bytearray, memoryview)


def text_batch(texts: Any, *, name: str = "texts") -> tuple[list[str], bool]:
    """``(batch, single)``: ``texts`` as a list of strings, and whether it was one ``str``.

    ``name`` is the argument's name in the ``TypeError`` (e.g. ``"queries"``). Raises ``TypeError`` for
    anything but a ``str`` or an ordered iterable of ``str``.
    """
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, _BYTES):
        raise TypeError(
            f"{name} must be a str or a list of str, got {type(texts).__name__}: decode it first (e.g. .decode('utf-8'))"
        )
    if isinstance(texts, (Mapping, Set)) or not isinstance(texts, Iterable):
        why = " (its order is undefined: pass a list)" if isinstance(texts, (Mapping, Set)) else ""
        raise TypeError(f"{name} must be a str or a list of str, got {_described(texts)}{why}")
    batch = list(texts)
    for index, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a str, got {_described(text)}: every text of a batch is a string")
    return batch, False


def _described(value: Any) -> str:
    """``int (42)``: the type, and a short look at the value."""
    shown = repr(value)
    return f"{type(value).__name__} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def check_not_empty(texts: list[str], where: str = "") -> None:
    """``ValueError`` naming the first empty or blank text by its index in ``texts`` (``where``: a prefix
    saying which texts, e.g. a task and split)."""
    for index, text in enumerate(texts):
        if not text.strip():
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}text {index} is empty: every text needs some content to embed")
