"""The test tree mirrors the packages; test file names stay unique across folders (pytest's default import
mode puts each folder on sys.path, so two test_x.py files would collide at collection)."""
from collections import Counter
from pathlib import Path


def test_test_file_names_are_unique():
    names = Counter(path.name for path in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
