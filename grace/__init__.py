"""GRACE: generative representation learning; a causal LM explains each text, its hidden states embed it.

``from grace import GraceEncoder`` is resolved lazily so that ``import grace.data`` and the command-line
parsers stay fast (the encoder pulls in torch and transformers).
"""

__all__ = ["GraceEncoder"]


def __getattr__(name: str):
    if name == "GraceEncoder":
        from grace.encoder import GraceEncoder

        return GraceEncoder
    raise AttributeError(f"module 'grace' has no attribute {name!r}")
