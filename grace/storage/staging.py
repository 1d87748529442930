"""Replacing a directory all at once: what encoders, checkpoints and indexes are written through.

A directory is written into a hidden staging directory beside its target and swapped into place only
when complete, so a reader (or a run killed mid-write) finds the old directory or the new one, never half
of one; and a path that is not one of ours is refused rather than wiped.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_replaceable(target: Path, *, marker: str, what: str) -> None:
    """Refuse to replace ``target`` unless it is missing, an empty directory, or holds ``marker`` (one of ours)."""
    if not target.exists() or (target / marker).is_file():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    raise ValueError(
        f"{target} exists and is not {what} (it has no {marker}): refusing to replace it; "
        f"choose a new or empty directory"
    )


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block finishes, it becomes ``target``.

    An existing ``target`` is exchanged with the staging directory in one atomic ``renameat2`` where the
    system has it, so a reader always finds either the old or the new directory, never nothing; elsewhere
    the old one is first renamed aside (a retired directory) and removed only once the new one is in
    place. If the block fails, the staging directory is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; models and indexes are shared
        yield staging
        if not target.exists():
            os.replace(staging, target)
        elif _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old directory
        else:
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD: the paths are used as given
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot exchange
        return False
    raise OSError(error, f"cannot swap {a} into place: {os.strerror(error)}", str(b))


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block finishes, its data
    synced to disk first, so a reader finds the old file or the whole new one (``.<name>.<random>.tmp`` while
    writing: debris of a killed writer, never mistaken for the file)."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes it private; the result should not be
    try:
        yield temporary
        with open(temporary, "rb+") as synced:
            os.fsync(synced.fileno())  # the data is on disk before the name points to it
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
