"""The package layout: layers that only point one way, a light config schema, and old module paths that
still import.

The layer contract itself is written down in ``.importlinter`` (import-linter); docs/architecture.md draws it.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

import grace
from grace.moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True) == 0


def test_every_module_sits_in_a_package_of_its_concept():
    top = sorted(p.name for p in Path(grace.__file__).parent.glob("*.py"))
    assert top == ["__init__.py", "config.py", "moved.py"]


def test_the_schema_and_the_cli_parsers_load_no_torch():
    code = "import sys, grace.config, grace.cli.train; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_are_the_new_modules(old):
    new = __import__(MOVED[old], fromlist=["_"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop(old, None)
        module = __import__(old, fromlist=["_"])
    assert module is new and module.__name__ == MOVED[old] and module.__spec__.name == MOVED[old]
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)


def test_old_names_of_modules_that_became_packages():
    from grace.embedding import EmbeddingConfig, embed
    from grace.embedding.pipeline import EmbeddingConfig as new_config
    from grace.embedding.pipeline import embed as new_embed
    from grace.retrieval import RetrievalIndex, build_index
    from grace.retrieval.index import RetrievalIndex as new_index
    from grace.retrieval.index import build_index as new_build

    assert (EmbeddingConfig, embed, RetrievalIndex, build_index) == (new_config, new_embed, new_index, new_build)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        grace.embedding.nothing  # noqa: B018


def test_python_m_with_the_old_entry_point_still_runs():
    done = subprocess.run([sys.executable, "-m", "grace.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "grace-train" in done.stdout or "train" in done.stdout
