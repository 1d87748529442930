"""Plumbing shared by the ``grace-encode`` and ``grace-index`` commands: reading texts, loading the encoder.

Both commands read texts the same way (one format list, one error style) and load the encoder with the
same options, so a corpus that encodes also indexes, and ``--no-rationale`` means the same thing in both.
Texts come from ``grace.data.readers``, so a bad line is reported with its file, line and field exactly as
for training data.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from grace.data.errors import DataError, DataIssue
from grace.data.examples import Sentence
from grace.data.readers import _records, _to_example, _type_name
from grace.embedding.encoder import GraceEncoder
from grace.embedding.encoder_files import resolve_model_dir
from grace.embedding.pipeline import EmbeddingConfig
from grace.generation.options import GenerationOptions
from grace.numerics.errors import EXIT_NON_FINITE, NonFiniteError
from grace.runs.console import quiet_third_party


@dataclass(frozen=True)
class TextRecord:
    """One input text. ``id`` is the id field's value as a string, or the line (row) number."""

    id: str
    text: str
    line: int  # 1-based line (text/JSONL) or row (parquet, datasets, packaged corpora), for messages


def read_texts(
    source: str, *, field: str = "text", id_field: str | None = None, limit: int | None = None
) -> list[TextRecord]:
    """All texts of ``source`` in order; a bad line stops the read with a message naming file, line and field.

    ``source``: a .txt file (one text per line, blank lines skipped, ids are line numbers), a .jsonl or
    .parquet file (texts from ``field``, ids from ``id_field`` or the line/row number), a saved
    ``datasets`` directory, ``hf:<name>`` or ``packaged:lee_background`` / ``packaged:wiki``.
    ``limit``: stop after that many texts (a quick trial on the head of a large corpus). Ids are not
    checked for uniqueness here: only an index needs them unique (``grace.retrieval.index``).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of texts, got {limit}")
    if id_field is not None and source.lower().endswith(".txt"):
        raise ValueError(f"{source}: a .txt file has no fields to take ids from; drop --id-field (ids are lines)")
    records: list[TextRecord] = []
    for record in _records(source, "unsupervised", (field,), "train"):
        if isinstance(record, DataIssue):
            raise DataError(record, hint=None)
        checked = _to_example(record, source, (field,), None)
        if isinstance(checked, DataIssue):
            raise DataError(checked, hint=_field_hint(checked, field))
        assert isinstance(checked, Sentence)
        ident = str(record.line) if id_field is None else _record_id(record.value, id_field, source, record.line)
        records.append(TextRecord(ident, checked.text, record.line))
        if len(records) == limit:
            break
    if not records:
        raise ValueError(f"{source} holds no texts (the file is empty or has only blank lines): nothing to embed")
    return records


def _record_id(value: dict, id_field: str, source: str, line: int) -> str:
    """Ids may be strings or integers (parquet and JSON often number documents); both become strings."""
    if id_field not in value:
        raise DataError(DataIssue(source, line, id_field, "missing field"), hint=f"check --id-field {id_field}")
    ident = value[id_field]
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        reason = f"an id must be a string or an integer, got {_type_name(ident)}"
        raise DataError(DataIssue(source, line, id_field, reason), hint=None)
    if isinstance(ident, str) and not ident.strip():
        raise DataError(DataIssue(source, line, id_field, "empty id"), hint=None)
    return str(ident)


def _field_hint(issue: DataIssue, field: str) -> str | None:
    if issue.reason == "missing field":
        return f"name the text field with --field (now {field!r})"
    return None


# ---------------------------------------------------------------------- encoder options


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--field/--column``, ``--id-field`` and ``--limit``: which texts of the input to read."""
    parser.add_argument(
        "--field", "--column", dest="field", default="text", help="JSONL field or parquet column of the texts"
    )
    parser.add_argument("--id-field", help="field or column with an id per text (default: line or row numbers)")
    parser.add_argument("--limit", type=int, help="read only the first N texts (a quick trial on a large input)")


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model``, hardware and cache options, identical for every command that loads an encoder.

    ``required=False``: a command over an index, whose manifest names the encoder and its dtype (the
    defaults then, so an index built in bfloat16 is searched in bfloat16 without being told).
    """
    parser.add_argument(
        "--model",
        required=required,
        help="saved encoder or training run directory, a .gguf file or a directory holding one, "
        "'packaged:smollm2-135m', 'tiny-random' (tests), or a hub id"
        + ("" if required else " (default: the encoder recorded in the index)"),
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts per generation batch (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype",
        default="float32" if required else None,
        choices=("float32", "bfloat16", "float16"),
        help="weights dtype (default: " + ("float32)" if required else "the dtype recorded in the index)"),
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-file",
        type=Path,
        help="SQLite embedding cache to read and fill (default: $GRACE_CACHE/embeddings.sqlite)",
    )
    cache.add_argument("--no-cache", action="store_true", help="always run the model, store nothing")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="static KV cache + torch.compile'd decoding step (CUDA graphs on GPUs); same embeddings",
    )


def add_setting_arguments(parser: argparse.ArgumentParser, prefix: str = "", what: str = "") -> None:
    """``--[prefix-]rationale/--no-[prefix-]rationale`` and ``--[prefix-]max-new-tokens``; None = saved setting."""
    parser.add_argument(
        f"--{prefix}rationale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write a rationale for {what or 'each text'} before pooling (default: the encoder's saved setting)",
    )
    parser.add_argument(
        f"--{prefix}max-new-tokens",
        type=int,
        default=None,
        help=f"longest rationale for {what or 'each text'}, in tokens (default: the encoder's saved setting)",
    )


def encoder_options(args: argparse.Namespace) -> dict:
    """``GraceEncoder.from_pretrained`` keyword arguments from ``add_model_arguments``'s options."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    cache: bool | Path = False if args.no_cache else (args.cache_file or True)
    generation = GenerationOptions(compile=args.compile)
    return {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size, "cache": cache, "generation": generation}


def load_encoder(args: argparse.Namespace) -> GraceEncoder:
    quiet_third_party()  # no weight-loading bars beside the command's own progress bar
    return GraceEncoder.from_pretrained(args.model, **encoder_options(args))


def with_overrides(config: EmbeddingConfig, rationale: bool | None, max_new_tokens: int | None) -> EmbeddingConfig:
    """``config`` with the command-line changes applied; every other setting (prompt, decoding) is kept."""
    if rationale is not None:
        config = replace(config, rationale=rationale)
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {max_new_tokens} (use --no-rationale for none)")
        config = replace(config, decoding=replace(config.decoding, max_new_tokens=max_new_tokens))
    return config


# What a command reports as one error line instead of a traceback: bad input or settings (ValueError,
# DataError) and anything the file system or the hub says (OSError: missing paths, offline look-ups).
USER_ERRORS = (ValueError, OSError)


def report_error(program: str, error: BaseException) -> int:
    """Print ``program: error: ...`` as one line on stderr (library messages may span several); return the exit
    status: 3 for a non-finite value (NaN embeddings of a diverged model, ``grace.numerics``), else 1."""
    print(f"{program}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_NON_FINITE if isinstance(error, NonFiniteError) else 1


def model_source(source: str) -> str:
    """What to record so that a later command reloads the very same model: a local path becomes the absolute
    path of the checkpoint or .gguf file it resolves to (a training run's newest checkpoint may change later)."""
    location = resolve_model_dir(source)
    return str(location.resolve()) if location is not None else source


__all__ = [
    "USER_ERRORS",
    "TextRecord",
    "add_input_arguments",
    "add_model_arguments",
    "add_setting_arguments",
    "encoder_options",
    "load_encoder",
    "model_source",
    "read_texts",
    "report_error",
    "with_overrides",
]
