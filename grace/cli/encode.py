"""``grace-encode``: texts in, embeddings (``.npy``) and their rationales (``.jsonl``) out, resumably.

    grace-encode texts.jsonl out/ --model runs/exp1 --field text

Writing a rationale for every text is slow (tens of tokens per text), so a large input is encoded in
chunks and each finished chunk is committed to ``out/chunks/`` by writing a temporary file and renaming
it: a rename is atomic, so a killed run leaves whole chunks or nothing, never half a chunk. Running the
same command again skips every committed chunk. ``out/manifest.json`` records what the run computes
(input hash, encoder fingerprint, settings, chunk size): resuming with a different input or model is an
error rather than a silent mix of two runs. At the end the chunks are assembled into
``out/embeddings.npy`` ([N, H] float32, L2-normalised, row i = text i) and ``out/rationales.jsonl``
(line i: ``{"id", "rationale", "truncated"}``), then removed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from grace.cli.shared_arguments import (
    USER_ERRORS,
    TextRecord,
    add_input_arguments,
    add_model_arguments,
    add_setting_arguments,
    load_encoder,
    read_texts,
    report_error,
    with_overrides,
)
from grace.embedding.encoder import ROLES, GraceEncoder
from grace.storage.integrity import is_disk_full
from grace.storage.staging import atomic_file

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
RATIONALES = "rationales.jsonl"
CHUNKS = "chunks"
FORMAT_VERSION = 1


@dataclass
class EncodeSummary:
    """What one call did; ``computed`` and ``reused`` are chunk numbers."""

    output: Path
    count: int  # texts
    dim: int
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    already_complete: bool = False


def encode_to_directory(
    encoder: GraceEncoder,
    records: Sequence[TextRecord],
    output: str | Path,
    *,
    role: str = "document",
    chunk_size: int = 1024,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    provenance: dict | None = None,
) -> EncodeSummary:
    """Encode ``records`` with ``encoder``'s ``role`` settings into ``output``, resuming a previous run there.

    ``progress(n)``: n more texts are done (committed chunks found on resume count too). ``overwrite``:
    discard a previous run in ``output`` made with other inputs or settings instead of refusing.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    if not records:
        raise ValueError("no texts to encode")
    output = Path(output)
    job = _job(encoder, records, role, chunk_size)
    summary = EncodeSummary(output, len(records), job["dim"])
    chunks = output / CHUNKS
    if _prepare(output, job, overwrite, provenance or {}):
        # A run killed after marking itself complete but before removing its chunks left them behind.
        shutil.rmtree(chunks, ignore_errors=True)
        _remove_temporaries(output)
        summary.already_complete = True
        return summary

    chunks.mkdir(exist_ok=True)
    _remove_temporaries(output)
    try:
        for number, start in enumerate(range(0, len(records), chunk_size)):
            chunk = records[start : start + chunk_size]
            if _chunk_done(chunks, number, len(chunk), job["dim"]):
                summary.reused.append(number)
                if progress is not None:
                    progress(len(chunk))
                continue
            _encode_chunk(encoder, chunk, role, chunks, number, progress)
            summary.computed.append(number)
        _assemble(output, len(records), job["dim"], -(-len(records) // chunk_size))
    except OSError as error:
        if not is_disk_full(error):
            raise
        done = len(summary.computed) + len(summary.reused)  # committed whole (atomic renames): kept for the rerun
        raise OSError(
            error.errno,
            f"no space left on the device while writing to {output} ({error.strerror or error}): the {done} chunks of "
            f"{chunk_size} texts committed so far are kept; free space and run the same command to continue from them",
        ) from error
    manifest = json.loads((output / MANIFEST).read_text())
    _write_json(output / MANIFEST, {**manifest, "complete": True})
    shutil.rmtree(chunks)
    return summary


def _job(encoder: GraceEncoder, records: Sequence[TextRecord], role: str, chunk_size: int) -> dict:
    """Everything that decides the output; a run may only be resumed when all of it is unchanged."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.id}\x00{record.text}\x00".encode())
    return {
        "format_version": FORMAT_VERSION,
        "count": len(records),
        "input_sha256": digest.hexdigest(),
        "chunk_size": chunk_size,
        "role": role,
        "settings": encoder.config_for(role).to_dict(),
        "fingerprint": encoder.fingerprint,  # the weights, whatever path or name they were loaded by
        "tokenizer": encoder.tokenizer_fingerprint,  # vocabulary, special tokens, chat template
        "generation": encoder.generation_fingerprint,  # the stop tokens of generation_config.json
        "dim": encoder.embedding_dim,
    }


def _prepare(output: Path, job: dict, overwrite: bool, provenance: dict) -> bool:
    """Check ``output`` against ``job`` and write the manifest; True when that very job is already complete."""
    manifest_path = output / MANIFEST
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
            differs = sorted(key for key in job if previous.get(key) != job[key])
        except (json.JSONDecodeError, AttributeError):
            previous, differs = {}, [f"{MANIFEST} (unreadable)"]
        if not differs:
            if previous.get("complete") and (output / EMBEDDINGS).is_file() and (output / RATIONALES).is_file():
                return True
            return False  # resume
        if not overwrite:
            raise ValueError(
                f"{output} holds a run of other inputs or settings (differs in: {', '.join(differs)}); "
                f"choose a new output directory, or pass --overwrite to discard it"
            )
        shutil.rmtree(output / CHUNKS, ignore_errors=True)
        for name in (EMBEDDINGS, RATIONALES, MANIFEST):
            (output / name).unlink(missing_ok=True)
    elif output.exists() and not _is_empty_output(output):
        raise ValueError(f"{output} exists and is not a grace-encode output directory: choose a new or empty directory")
    output.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, {**job, "input": provenance, "complete": False})
    return False


def _is_empty_output(output: Path) -> bool:
    """A directory with nothing of the user's in it: empty, or holding only the temporary manifest of a run
    killed during its first manifest write (``atomic_file`` names it ``.manifest.json.<random>.tmp``)."""
    if not output.is_dir():
        return False
    return all(p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp") for p in output.iterdir())


def _remove_temporaries(output: Path) -> None:
    """Temporary files of runs killed while writing; never mistaken for results (see ``atomic_file``)."""
    for stale in [*(output / CHUNKS).glob(".*.tmp"), *output.glob(".*.tmp")]:
        stale.unlink()


def _chunk_paths(chunks: Path, number: int) -> tuple[Path, Path]:
    return chunks / f"{number:05d}.npy", chunks / f"{number:05d}.jsonl"


def _chunk_done(chunks: Path, number: int, rows: int, dim: int) -> bool:
    """A chunk counts once its ``.npy`` exists: it is renamed into place last, after its rationales."""
    vectors, rationales = _chunk_paths(chunks, number)
    if not (vectors.is_file() and rationales.is_file()):
        return False
    try:
        shape = np.load(vectors, mmap_mode="r").shape
    except (ValueError, OSError):
        return False  # unreadable: recompute it (atomic renames make this a disk fault, not a crash)
    return shape == (rows, dim)


def _encode_chunk(
    encoder: GraceEncoder,
    chunk: Sequence[TextRecord],
    role: str,
    chunks: Path,
    number: int,
    progress: Callable[[int], None] | None,
) -> None:
    reported = 0

    def count(n: int) -> None:
        nonlocal reported
        reported += n
        if progress is not None:
            progress(n)

    result = encoder.encode_with_rationales([r.text for r in chunk], role=role, progress=count)
    if progress is not None and reported < len(chunk):
        progress(len(chunk) - reported)  # the encoder reports distinct texts; duplicates are done too
    vectors, rationales = _chunk_paths(chunks, number)
    lines = [
        json.dumps({"id": r.id, "rationale": why, "truncated": bool(cut)}, ensure_ascii=False) + "\n"
        for r, why, cut in zip(chunk, result.rationales, result.truncated)
    ]
    with atomic_file(rationales) as temporary:
        temporary.write_text("".join(lines), encoding="utf-8")
    with atomic_file(vectors) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, result.embeddings.astype(np.float32))


def _assemble(output: Path, count: int, dim: int, n_chunks: int) -> None:
    """Chunks -> ``embeddings.npy`` + ``rationales.jsonl``, each renamed into place whole; the embeddings
    are copied chunk by chunk into a memory-mapped file, so the input never has to fit in memory."""
    chunks = output / CHUNKS
    with atomic_file(output / EMBEDDINGS) as temporary:
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(count, dim))
        row = 0
        for number in range(n_chunks):
            part = np.load(_chunk_paths(chunks, number)[0])
            target[row : row + len(part)] = part
            row += len(part)
        target.flush()
        del target
        if row != count:
            raise RuntimeError(f"assembled {row} rows from {chunks}, expected {count}")
    with atomic_file(output / RATIONALES) as temporary:
        with open(temporary, "wb") as handle:
            for number in range(n_chunks):
                with open(_chunk_paths(chunks, number)[1], "rb") as part:
                    shutil.copyfileobj(part, handle)


def _write_json(path: Path, value: dict) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grace-encode",
        description="Embed texts with a GRACE encoder: writes OUTPUT/embeddings.npy and OUTPUT/rationales.jsonl. "
        "A killed run resumes where it stopped when the same command is run again.",
    )
    parser.add_argument(
        "input", help="a .txt (one text per line), .jsonl or .parquet file, a saved dataset, or packaged:NAME"
    )
    parser.add_argument("output", type=Path, help="output directory (created; reused to resume)")
    add_input_arguments(parser)
    parser.add_argument(
        "--role", choices=ROLES, default="document", help="embed as documents or as queries (their settings may differ)"
    )
    add_model_arguments(parser)
    add_setting_arguments(parser)
    parser.add_argument("--chunk-size", type=int, default=1024, help="texts per committed chunk (default 1024)")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard a previous run of other inputs or settings in OUTPUT"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records = read_texts(args.input, field=args.field, id_field=args.id_field, limit=args.limit)
        encoder = load_encoder(args)
        encoder.configs[args.role] = with_overrides(encoder.configs[args.role], args.rationale, args.max_new_tokens)
        summary = _run(encoder, records, args)
    except USER_ERRORS as error:
        return report_error("grace-encode", error)
    if summary.already_complete:
        print(f"{args.output} is already complete ({summary.count} texts): nothing to do", file=sys.stderr)
    else:
        resumed = f", {len(summary.reused)} chunks reused from an earlier run" if summary.reused else ""
        print(f"wrote {summary.count} embeddings of dimension {summary.dim} to {args.output}{resumed}", file=sys.stderr)
    return 0


def _run(encoder: GraceEncoder, records: list[TextRecord], args: argparse.Namespace) -> EncodeSummary:
    from tqdm.auto import tqdm

    provenance = {
        "source": args.input, "field": args.field, "id_field": args.id_field, "limit": args.limit, "model": args.model
    }
    with tqdm(total=len(records), unit="text", desc="encoding", disable=args.quiet) as bar:
        return encode_to_directory(
            encoder,
            records,
            args.output,
            role=args.role,
            chunk_size=args.chunk_size,
            progress=bar.update,
            overwrite=args.overwrite,
            provenance=provenance,
        )


if __name__ == "__main__":
    sys.exit(main())
