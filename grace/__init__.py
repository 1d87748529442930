"""GRACE: generative representation learning; a causal LM explains each text, its hidden states embed it.

``from grace import GraceEncoder`` is resolved lazily so that ``import grace.data`` and the command-line
parsers stay fast (the encoder pulls in torch and transformers). Module paths from before the package
layout still import (``grace.moved``).
"""
from grace.moved import install as _install_moved_paths

_install_moved_paths()

__all__ = ["GraceEncoder"]


def __getattr__(name: str):
    if name == "GraceEncoder":
        from grace.embedding.encoder import GraceEncoder

        return GraceEncoder
    raise AttributeError(f"module 'grace' has no attribute {name!r}")
