"""The error every non-finite value raises, importable without torch (the command lines map it to an exit status)."""
from __future__ import annotations


class NonFiniteError(ValueError):
    """A NaN or infinite value where only finite ones are valid; the message names it.

    One message argument only, so the error pickles and unpickles unchanged across process boundaries
    (joblib, submitit): ``pickle`` rebuilds an exception from ``args``.
    """


EXIT_NON_FINITE = 3  # the exit status of every command stopped by one (2: a user error; 1: a bug)
