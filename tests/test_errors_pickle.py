"""Every exception the product defines survives a pickle round trip with its type and message: joblib and
submitit hand a failed job's error back to the sweep pickled, and one that cannot be rebuilt broke joblib's
whole pool (``BrokenProcessPool``), losing the other jobs. Found generically: a new exception class is
tested without being listed here, unless its constructor needs an example (``EXAMPLES``)."""
from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import grace
from grace.data.errors import DataError, DataIssue
from grace.runs.portable_errors import JobFailed, portable, survives_pickling

# Classes whose constructor does not take a message: how to build one.
EXAMPLES = {
    DataError: [
        lambda: DataError(DataIssue("data/train.jsonl", 12, "positive", "empty text")),
        lambda: DataError(DataIssue("packaged:chatterbot", 3, "query", "too long", place="ai.yml:12"), hint=None),
        lambda: DataError(DataIssue("data/bad.jsonl", None, None, "not a JSONL file")),
    ],
}


def product_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a module of the grace package (all of them imported)."""
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(grace.__path__, "grace."):
        imported = importlib.import_module(module.name)
        for _, value in inspect.getmembers(imported, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("grace."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


EXCEPTIONS = product_exceptions()


def instances(cls: type[BaseException]) -> list[BaseException]:
    if cls in EXAMPLES:
        return [make() for make in EXAMPLES[cls]]
    try:
        return [cls("data/train.jsonl, line 3: the message, with 'quotes' and a second clause")]
    except TypeError as error:
        pytest.fail(f"{cls.__module__}.{cls.__qualname__} needs an example in EXAMPLES: {error}")


def test_the_known_product_exceptions_are_found():
    names = {cls.__name__ for cls in EXCEPTIONS}
    expected = {"DataError", "ConfigError", "ComponentError", "ModelSourceError", "DataUnavailable", "InvalidIndexError",
                "EncoderMismatchError", "MetricNotFound", "JobFailed", "SearchFailed", "SearchSpaceChanged"}
    assert expected <= names, expected - names


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_product_exception_survives_pickling_with_its_message(cls):
    for error in instances(cls):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls
        assert str(copy) == str(error) and copy.args == error.args
        assert vars(copy) == vars(error)  # e.g. DataError's issue and hint


def test_a_data_error_keeps_its_issue_across_processes():
    error = EXAMPLES[DataError][0]()
    copy = pickle.loads(pickle.dumps(error))
    assert copy.issue == error.issue and "line 12, field 'positive': empty text" in str(copy)
    assert "data.on_error=skip" in str(copy)


class NeedsTwoArguments(Exception):  # a user's exception written like DataError was
    def __init__(self, code: int, detail: str):
        super().__init__(f"code {code}: {detail}")


class BrokenReduce(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def test_an_error_that_cannot_travel_becomes_a_job_failed_naming_it():
    for error, shown in [(NeedsTwoArguments(7, "judge timed out"), "code 7: judge timed out"), (BrokenReduce("bad"), "bad")]:
        assert not survives_pickling(error)
        try:
            raise error
        except Exception as raised:
            replaced = portable(raised)
        assert isinstance(replaced, JobFailed)
        assert f"{type(error).__qualname__}: {shown}" in str(replaced)
        assert "Traceback" in str(replaced)  # where it happened, as text
        assert survives_pickling(replaced)


@pytest.mark.parametrize("error", [ValueError("plain"), KeyError("key"), EXAMPLES[DataError][0]()], ids=repr)
def test_an_error_that_travels_is_left_alone(error):
    assert portable(error) is error
