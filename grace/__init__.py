"""GRACE: generative representation learning; a causal LM explains each text, its hidden states embed it.

``from grace import GraceEncoder`` is resolved lazily so that ``import grace.data`` and the command-line
parsers stay fast (the encoder pulls in torch and transformers). Module paths from before the package
layout still import (``grace.moved``). Importing ``grace`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
set a policy (``grace.distributed.threads``).
"""
# First, before anything here can load torch: OpenMP reads its wait policy once, when torch loads it. A
# passive policy keeps a job fast on cores shared with other jobs (grace/distributed/threads.py).
from grace.distributed.threads import default_wait_policy as _default_wait_policy

_default_wait_policy()

from grace.moved import install as _install_moved_paths  # noqa: E402

_install_moved_paths()

__all__ = ["GraceEncoder"]


def __getattr__(name: str):
    if name == "GraceEncoder":
        from grace.embedding.encoder import GraceEncoder

        return GraceEncoder
    raise AttributeError(f"module 'grace' has no attribute {name!r}")
