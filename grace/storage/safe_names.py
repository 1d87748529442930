"""Names that are safe as file names everywhere: letters, digits and ``. _ = , + -``, bounded, and unique.

Anything else (slashes, spaces, quotes, other scripts) becomes ``-`` (accents are dropped first: "naïve"
reads "naive"); a name so changed or cut ends with 8 hex digits of the full text's hash, so two texts never
share a name. Used for sweep job directories, wandb run names and checkpoint encoder names.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def readable_name(text: str, max_chars: int) -> str:
    """``text`` itself when it is short and safe; otherwise its safe form cut to ``max_chars``, then ``-`` and
    8 hex digits of the sha256 of ``text`` (at most ``max_chars + 9`` ASCII characters, no ``/``)."""
    letters = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    slug = _UNSAFE.sub("-", letters)
    if slug == text and len(slug) <= max_chars:
        return text
    return f"{slug[:max_chars]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
