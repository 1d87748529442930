"""The file manifest on hand-made directories: every kind of damage is named; a full disk is recognised."""
from __future__ import annotations

import errno
import json

import pytest

from grace.storage.integrity import MANIFEST_FILE, BrokenDirectory, check_file_manifest, is_disk_full, require_whole, write_file_manifest


@pytest.fixture
def directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" * 500)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text('{"a": 1}')
    write_file_manifest(tmp_path)
    return tmp_path


def test_the_manifest_lists_sizes_and_hashes_of_every_other_file(directory):
    files = json.loads((directory / MANIFEST_FILE).read_text())["files"]
    assert sorted(files) == ["sub/config.json", "weights.bin"]
    assert files["weights.bin"]["bytes"] == 1000 and len(files["weights.bin"]["sha256"]) == 64
    assert check_file_manifest(directory) == []
    require_whole(directory, "the model directory")  # no error


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / "weights.bin").write_bytes(b"\x00" * 10), "weights.bin has 10 bytes, 1000 were written (truncated)"),
        (lambda d: (d / "weights.bin").write_bytes(b"\x00" * 1001), "weights.bin has 1001 bytes, 1000 were written (changed)"),
        (lambda d: (d / "weights.bin").write_bytes(b"\x01\x01" * 500), "weights.bin differs from what was written (SHA-256)"),
        (lambda d: (d / "sub" / "config.json").unlink(), "sub/config.json is missing"),
        (lambda d: (d / MANIFEST_FILE).write_text("[]"), "file_manifest.json is unreadable"),
    ],
    ids=["truncated", "grown", "same-size-changed", "missing", "unreadable-manifest"],
)
def test_each_kind_of_damage_is_named(directory, damage, problem):
    damage(directory)
    assert any(p.startswith(problem) for p in check_file_manifest(directory)), check_file_manifest(directory)
    with pytest.raises(BrokenDirectory, match=f"the model directory {directory} is damaged: "):
        require_whole(directory, "the model directory")


def test_a_directory_without_a_manifest_predates_them(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert check_file_manifest(tmp_path) is None
    require_whole(tmp_path, "the model directory")


def test_a_full_disk_and_an_exhausted_quota_are_told_from_other_errors():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("x"))


def test_editable_files_are_listed_but_not_checked(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 8)
    (tmp_path / "settings.json").write_text('{"max_new_tokens": 8}')
    write_file_manifest(tmp_path, editable=["settings.json"])
    (tmp_path / "settings.json").write_text('{"max_new_tokens": 16, "edited": "by hand"}')
    assert check_file_manifest(tmp_path) == []
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 4)
    assert check_file_manifest(tmp_path) == ["weights.bin has 4 bytes, 8 were written (truncated)"]
