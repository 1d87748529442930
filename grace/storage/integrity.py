"""Whether a written directory is whole: a manifest of its files' sizes (and hashes of the small ones),
written last, checked before the directory is trusted; and a full disk told apart from other write errors.

A directory swapped into place whole (``grace.storage.staging``) can still be damaged afterwards: a copy to
another machine cut short, a file system that filled up while syncing, a file deleted by hand. The manifest
``file_manifest.json`` lists every file with its size in bytes, and the SHA-256 of every file up to
``HASH_LIMIT`` bytes (configs, tokenizer, trainer state of small models; hashing several GB of weights at
each save and load would cost more than it finds: a cut copy shows in the size). It is written after every
other file, so a directory that has it was complete when written; one without it was written before
manifests existed (grace 0.2 and older) and is trusted as before. Files meant to be edited by hand (a saved
encoder's ``grace_encoder.json``, a checkpoint's ``train_config.yaml``) are listed but not checked.
"""
from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Sequence

from grace.storage.staging import atomic_file

MANIFEST_FILE = "file_manifest.json"
MANIFEST_VERSION = 1
HASH_LIMIT = 64 * 2**20  # bytes: files up to this size are hashed too


class BrokenDirectory(ValueError):
    """A directory whose files do not match its manifest (missing, truncated, changed); the message names them."""


def write_file_manifest(directory: Path, editable: Sequence[str] = ()) -> Path:
    """Record every file under ``directory`` (sizes, small files' SHA-256) in ``MANIFEST_FILE``; call it last.

    ``editable``: files (relative paths) meant to be edited by hand, such as a saved encoder's settings: listed
    but never checked, since their own readers validate them (and a checkpoint without its training config
    resumes with a warning, as one written before configs were recorded)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        size = path.stat().st_size
        name = path.relative_to(directory).as_posix()
        entry: dict[str, int | str | bool] = {"bytes": size}
        if name in editable:
            entry["editable"] = True
        elif size <= HASH_LIMIT:
            entry["sha256"] = _sha256(path)
        files[name] = entry
    target = directory / MANIFEST_FILE
    with atomic_file(target) as temporary:  # on disk before its name: a manifest is whole or absent
        temporary.write_text(json.dumps({"format_version": MANIFEST_VERSION, "files": files}, indent=1) + "\n")
    return target


def check_file_manifest(directory: Path) -> list[str] | None:
    """What is wrong with ``directory`` by its manifest, one line per file ([] when whole); None without a manifest."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        entries = [(name, int(entry["bytes"]), entry.get("sha256")) for name, entry in files.items() if not entry.get("editable")]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        return [f"{MANIFEST_FILE} is unreadable ({type(error).__name__}: {error})"]
    problems = []
    for name, size, digest in entries:
        file = directory / name
        if not file.is_file():
            problems.append(f"{name} is missing")
            continue
        actual = file.stat().st_size
        if actual != size:
            problems.append(f"{name} has {actual} bytes, {size} were written ({'truncated' if actual < size else 'changed'})")
        elif digest is not None and _sha256(file) != digest:
            problems.append(f"{name} differs from what was written (SHA-256)")
    return problems


def require_whole(directory: Path, what: str) -> None:
    """Raise ``BrokenDirectory`` naming the damaged files if ``directory`` does not match its manifest."""
    problems = check_file_manifest(directory)
    if problems:
        raise BrokenDirectory(f"{what} {directory} is damaged: {'; '.join(problems)}")


def is_disk_full(error: BaseException) -> bool:
    """No space left on the device, or the user's quota exhausted."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
