"""Read training examples from files, ``datasets`` datasets and the packaged corpora, checking each one.

Every reader turns its source into numbered raw records (a dict per line or row); one function,
``_to_example``, checks a record and builds the example, so every format reports bad input the same
way: file, 1-based line and field. A bad example either stops the run at once (``on_error="raise"``,
the default, because a silently shrunken data set gives results nobody can reproduce) or is skipped
and recorded (``on_error="skip"``), in which case ``LoadedData.summary()`` says what was dropped.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from grace.data.errors import DataError, DataIssue
from grace.data.examples import Demonstration, Example, Sentence, Triplet

DEMONSTRATIONS = "demonstrations"  # the examples of objective=sft: {"text", "rationale"}
MODES = ("supervised", "unsupervised", DEMONSTRATIONS)  # the kinds of example a source is read as
ON_ERROR = ("raise", "skip")
TRIPLET_FIELDS = ("query", "positive", "negative")
DEMONSTRATION_FIELDS = ("text", "rationale")
JSON_SUFFIXES = (".jsonl", ".json")
# The packaged corpora: the mode of the examples each one holds, and its splits.
PACKAGED_MODES = {"wiki": "unsupervised", "chatterbot": "supervised", "lee_background": "unsupervised"}
PACKAGED_SPLITS = {"wiki": ("train",), "chatterbot": ("train", "eval"), "lee_background": ("train",)}
PACKAGED = tuple(PACKAGED_MODES)
ACCEPTED_SOURCES = (
    "a .jsonl/.json (one JSON object per line), .txt (one text per line) or .parquet file; "
    "a directory saved with datasets.Dataset.save_to_disk; "
    "packaged:wiki, packaged:chatterbot, packaged:lee_background; "
    "hf:<dataset name>[:<config>]"
)


@dataclass
class LoadedData:
    """The usable examples of one source, in source order, and what was skipped on the way."""

    examples: list[Example]
    issues: list[DataIssue]  # empty unless on_error="skip"
    source: str
    limit: int | None = None  # the limit that stopped reading, if it did

    def summary(self) -> str:
        """``"read 600 examples from X; skipped 3 (2 empty text, 1 malformed JSON)"``."""
        text = f"read {len(self.examples)} examples from {self.source}"
        if self.limit is not None:
            text += f" (stopped at limit={self.limit})"
        if self.issues:
            text += f"; skipped {len(self.issues)} ({_count_kinds(self.issues)})"
        return text


@dataclass(frozen=True)
class _Record:
    """One raw line or row before checking: ``value`` should be a dict of fields."""

    line: int  # 1-based
    value: Any
    origin: str
    place: str | None = None  # DataIssue.place: where a packaged corpus's example really comes from


def load_examples(
    source: str,
    mode: str,
    *,
    on_error: str = "raise",
    token_count: Callable[[str], int] | None = None,
    max_tokens: int | dict[str, int] | None = None,
    limit: int | None = None,
    text_field: str = "text",
    split: str = "train",
) -> LoadedData:
    """Read and check the examples of ``source``; see the module docstring for the error policy.

    ``mode``: "supervised" reads Triplets (fields query, positive, negative), "unsupervised" reads
    Sentences (field ``text_field``), "demonstrations" reads Demonstrations (fields text, rationale).
    Texts are stripped of surrounding whitespace. With ``max_tokens`` (one budget for every field, or
    field -> budget), a text whose ``token_count`` exceeds it is a bad example (it would be truncated
    inside the prompt). ``limit`` stops after that many good examples. ``split`` selects the split
    of ``packaged:chatterbot`` and of ``datasets`` sources.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}: use one of {', '.join(ON_ERROR)}")
    if max_tokens is not None and token_count is None:
        raise ValueError("max_tokens needs token_count, the function that counts a text's tokens")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    fields = {"supervised": TRIPLET_FIELDS, DEMONSTRATIONS: DEMONSTRATION_FIELDS}.get(mode, (text_field,))
    budget = (token_count, max_tokens) if token_count is not None and max_tokens is not None else None

    examples: list[Example] = []
    issues: list[DataIssue] = []
    for record in _records(source, mode, fields, split):
        checked = record if isinstance(record, DataIssue) else _to_example(record, source, fields, budget)
        if isinstance(checked, DataIssue):
            if on_error == "raise":
                raise DataError(checked)
            issues.append(checked)
            continue
        examples.append(checked)
        if limit is not None and len(examples) == limit:
            return LoadedData(examples, issues, source, limit=limit)

    if not examples:
        reason = "no usable examples"
        if issues:
            first = issues[0]
            reason += f" (all {len(issues)} skipped: {_count_kinds(issues)}; first: {first.describe()})"
        raise DataError(DataIssue(source, None, None, reason), hint=None)
    return LoadedData(examples, issues, source)


def _to_example(
    record: _Record,
    source: str,
    fields: tuple[str, ...],
    budget: tuple[Callable[[str], int], int | dict[str, int]] | None,
) -> Example | DataIssue:
    """Check one record field by field and build its example, or say what is wrong with it."""

    def issue(field: str | None, reason: str) -> DataIssue:
        return DataIssue(source, record.line, field, reason, place=record.place)

    if not isinstance(record.value, dict):
        return issue(None, f"not a JSON object (got {_type_name(record.value)})")
    texts: list[str] = []
    for field in fields:
        if field not in record.value:
            return issue(field, "missing field")
        value = record.value[field]
        if not isinstance(value, str):
            return issue(field, f"not a string (got {_type_name(value)})")
        text = value.strip()
        if not text:
            return issue(field, "empty text")
        if budget is not None:
            token_count, max_tokens = budget
            limit = max_tokens.get(field) if isinstance(max_tokens, dict) else max_tokens
            tokens = token_count(text)
            if limit is not None and tokens > limit:
                what = "the rationale budget" if field == "rationale" else "the prompt budget"
                return issue(field, f"text has {tokens} tokens, over {what} of {limit}")
        texts.append(text)
    if len(fields) == 3:
        return Triplet(texts[0], texts[1], texts[2], origin=record.origin)
    if fields == DEMONSTRATION_FIELDS:
        return Demonstration(texts[0], texts[1], origin=record.origin)
    return Sentence(texts[0], origin=record.origin)


def check_source(source: str, mode: str, split: str = "train") -> None:
    """Raise if ``source`` cannot give ``mode`` examples, judged from its name and form without reading
    it, so that a trainer rejects a hopeless data setting before it loads a model: an unknown packaged
    corpus or split, a corpus of the other mode, a missing path, a .txt file in supervised mode, an
    unsupported file type. Missing paths raise FileNotFoundError, the rest ValueError."""
    if source.startswith("hf:"):
        return  # only the hub can say
    if source.startswith("packaged:"):
        name = source.removeprefix("packaged:")
        if name not in PACKAGED_MODES:
            known = ", ".join(f"packaged:{n}" for n in PACKAGED_MODES)
            raise ValueError(f"unknown packaged corpus {name!r}: use one of {known}")
        wanted = PACKAGED_MODES[name]
        if mode == DEMONSTRATIONS:
            raise ValueError(
                f"{source} holds {wanted} data, not demonstrations: objective=sft reads a .jsonl/.parquet file or a "
                "datasets directory with fields text, rationale (make one with `grace-sft sample`)"
            )
        if mode != wanted:
            suitable = ", ".join(f"packaged:{n}" for n, m in PACKAGED_MODES.items() if m == mode)
            raise ValueError(
                f"{source} holds {wanted} data; it cannot be read with mode={mode!r}: "
                f"use mode={wanted!r}, or {mode} data such as {suitable}"
            )
        if split not in PACKAGED_SPLITS[name]:
            raise ValueError(f"{source} has no split {split!r}; it has {', '.join(PACKAGED_SPLITS[name])}")
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data source {source!r} does not exist; accepted sources: {ACCEPTED_SOURCES}")
    if path.is_dir():
        _check_saved_dataset(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".txt" and mode != "unsupervised":
        fields = DEMONSTRATION_FIELDS if mode == DEMONSTRATIONS else TRIPLET_FIELDS
        raise ValueError(
            f"{source}: a .txt file holds one text per line, which only suits mode='unsupervised'; "
            f"{mode} data needs a .jsonl or .parquet file with fields {', '.join(fields)}"
        )
    if suffix not in (*JSON_SUFFIXES, ".txt", ".parquet"):
        raise ValueError(f"{source}: unsupported file type {suffix!r}; accepted sources: {ACCEPTED_SOURCES}")


def _records(source: str, mode: str, fields: tuple[str, ...], split: str) -> Iterator[_Record | DataIssue]:
    """Dispatch on the form of ``source``; each reader yields records or whole-line issues."""
    check_source(source, mode, split)
    if source.startswith("packaged:"):
        return _packaged_records(source, fields, split)
    if source.startswith("hf:"):
        return _dataset_records(_load_hub_dataset(source, split), label=source)
    path = Path(source)
    if path.is_dir():
        return _dataset_records(_load_saved_dataset(path, split), label=path.name)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _json_lines(path, source)
    if suffix == ".txt":
        return _text_lines(path, source, fields[0])
    return _parquet_rows(path, source)


def _decoded_lines(path: Path, source: str) -> Iterator[tuple[int, str] | DataIssue]:
    """Lines as text, numbered from 1; decoded one by one so a bad byte is reported at its line."""
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            # A byte-order mark that some editors put at the start of the file is not data.
            encoding = "utf-8-sig" if line == 1 else "utf-8"
            try:
                yield line, raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as error:
                byte = error.object[error.start]
                reason = f"not valid UTF-8 (byte 0x{byte:02x} at position {error.start})"
                yield DataIssue(source, line, None, reason)


def _json_lines(path: Path, source: str) -> Iterator[_Record | DataIssue]:
    for item in _decoded_lines(path, source):
        if isinstance(item, DataIssue):
            yield item
            continue
        line, text = item
        if not text.strip():
            continue  # blank lines are layout (a trailing newline, a separator), not examples
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield DataIssue(source, line, None, f"malformed JSON: {error.msg}")
            continue
        yield _Record(line, value, f"{path.name}:{line}")


def _text_lines(path: Path, source: str, field: str) -> Iterator[_Record | DataIssue]:
    for item in _decoded_lines(path, source):
        if isinstance(item, DataIssue):
            yield item
            continue
        line, text = item
        if text.strip():  # blank lines are layout, not examples
            yield _Record(line, {field: text}, f"{path.name}:{line}")


def _parquet_rows(path: Path, source: str) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for value in batch.to_pylist():
            row += 1
            yield _Record(row, value, f"{path.name}:{row}")


def _load_hub_dataset(source: str, split: str) -> Any:
    """``hf:<name>[:<config>]``: a hub dataset, or a local directory ``load_dataset`` understands."""
    import datasets

    name, _, config = source.removeprefix("hf:").partition(":")
    if Path(name).is_dir() and _is_saved_dataset(Path(name)):
        return _load_saved_dataset(Path(name), split)
    return datasets.load_dataset(name, config or None, split=split)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _check_saved_dataset(path: Path) -> None:
    if not _is_saved_dataset(path):
        raise FileNotFoundError(
            f"{path} is a directory but not one written by datasets' save_to_disk; "
            f"accepted sources: {ACCEPTED_SOURCES}"
        )


def _load_saved_dataset(path: Path, split: str) -> Any:
    """A directory written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: pick ``split``)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))  # both callers have checked that it is one
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path} has no split {split!r}; it has {', '.join(loaded)}")
        return loaded[split]
    return loaded


def _dataset_records(dataset: Any, label: str) -> Iterator[_Record]:
    """Rows numbered from 1; ``label`` starts each origin ("saved_dir:3", "hf:name:config:3")."""
    for index, value in enumerate(dataset):
        yield _Record(index + 1, value, f"{label}:{index + 1}")


def _packaged_records(source: str, fields: tuple[str, ...], split: str) -> Iterator[_Record]:
    """Numbered like rows, placed where a user can look them up: chatterbot by its YAML file and line,
    lee_background by its line in the .cor file, wiki by sentence number (it comes from markup)."""
    from grace.data import packaged

    name = source.removeprefix("packaged:")
    if name == "chatterbot":
        for index, triplet in enumerate(packaged.chatterbot_triplets(split)):
            value = {"query": triplet.query, "positive": triplet.positive, "negative": triplet.negative}
            yield _Record(index + 1, value, triplet.origin, place=triplet.origin.removeprefix(f"{source}:"))
        return
    if name == "wiki":
        for index, text in enumerate(packaged.wiki_sentences()):
            yield _Record(index + 1, {fields[0]: text}, f"{source}:{index + 1}", place=f"sentence {index + 1}")
        return
    for index, text in enumerate(packaged.lee_background_documents()):  # one document per line
        place = f"{packaged.LEE_BACKGROUND}:{index + 1}"
        yield _Record(index + 1, {fields[0]: text}, f"{source}:{index + 1}", place=place)


def _issue_kind(issue: DataIssue) -> str:
    """The reason without its details, for counting: "malformed JSON", "empty text", ..."""
    if "over the prompt budget" in issue.reason or "over the rationale budget" in issue.reason:
        return "over the token budget"
    return issue.reason.split(":")[0].split(" (")[0]


def _count_kinds(issues: list[DataIssue]) -> str:
    counts = Counter(_issue_kind(issue) for issue in issues)
    return ", ".join(f"{count} {kind}" for kind, count in counts.most_common())


def _type_name(value: object) -> str:
    """JSON's names for Python values, since most bad values come from JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
