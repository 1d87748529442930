"""A job's error that can cross a process boundary: joblib, submitit and torchrun hand it back pickled.

Hydra's launchers return each job's exception to the parent inside its ``JobReturn``; an exception that
pickles but cannot be rebuilt (``cls(*args)`` fails, as ``DataError(issue)`` did with its message as
``issue``) breaks joblib's whole pool (``BrokenProcessPool``) and loses every other job's result with it. The
product's own exceptions rebuild (tests/test_errors_pickle.py); ``portable`` covers the others a job can
raise (a user's reward component, a third-party library) by replacing one that does not survive a round
trip with a ``JobFailed`` that carries its type, message and traceback as text.
"""
from __future__ import annotations

import pickle
import traceback


class JobFailed(RuntimeError):
    """A job's exception that could not travel between processes: ``<module>.<type>: <message>`` and the
    original traceback, as text."""


def survives_pickling(error: BaseException) -> bool:
    """Whether ``error`` pickles and rebuilds as the same type with the same message."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # anything a broken __reduce__ or __init__ raises
        return False
    return type(copy) is type(error) and str(copy) == str(error)


def portable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a ``JobFailed`` describing it (type, message,
    traceback)."""
    if survives_pickling(error):
        return error
    kind = f"{type(error).__module__}.{type(error).__qualname__}"
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    return JobFailed(f"{kind}: {error} (the original could not be pickled; its traceback follows)\n{trace}")
