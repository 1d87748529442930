"""What went wrong with which example: a bad line must be findable from the error message alone."""
from __future__ import annotations

from dataclasses import dataclass

SKIP_HINT = "use data.on_error=skip to skip bad examples"


@dataclass(frozen=True)
class DataIssue:
    """One unusable example (or a whole unusable source when ``line`` is None)."""

    source: str  # file path or dataset name, as the user gave it
    line: int | None  # 1-based line (files) or row index + 1 (parquet, datasets, packaged corpora)
    field: str | None  # "query", "positive", "negative", "text"; None when the whole line is bad
    reason: str  # "empty text", "malformed JSON: Expecting ',' delimiter", ...
    # Where the example really is when "line N of source" is no place a user can open: a packaged
    # corpus's N-th example comes from "ai.yml:12" (file and line inside the package) or "sentence 37".
    place: str | None = None

    def describe(self) -> str:
        """``"data/train.jsonl, line 12, field 'positive': empty text"``; packaged corpora:
        ``"packaged:chatterbot, ai.yml:12, field 'positive': ..."``."""
        where = self.source
        if self.place is not None:
            where += f", {self.place}"
        elif self.line is not None:
            where += f", line {self.line}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.reason}"


class DataError(ValueError):
    """Bad input data; the message names file, line and field, plus how to skip such examples."""

    def __init__(self, issue: DataIssue, hint: str | None = SKIP_HINT):
        self.issue = issue
        self.hint = hint
        message = issue.describe()
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):
        # Pickle rebuilds an exception as cls(*args), and args is the message: rebuild from the issue instead,
        # or a joblib or submitit job's error cannot be read back in the parent (tests/data/test_errors_pickle.py).
        return (type(self), (self.issue, self.hint))
