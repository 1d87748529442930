"""Model sources in every form users have, through one resolver, at every entry point.

Accepted: a packaged name, ``tiny-random``, a hub id, a model directory, a training run directory (its
newest checkpoint), a directory holding exactly one .gguf file, a .gguf file. Anything else: one line
saying what is at the path and which forms work. The .gguf tests use the packaged SmolLM2 file, linked
into a temporary directory: its converted copy is keyed by content, so they share the packaged model's
conversion (the one slow test converts into a fresh cache on purpose).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import compose_config

from grace.cli.encode import main as encode_main
from grace.cli.index import main as index_main
from grace.config import ConfigError
from grace.embedding.encoder import GraceEncoder
from grace.embedding.encoder_files import resolve_model_dir
from grace.embedding.pipeline import EmbeddingConfig
from grace.evaluation.config import ModelConfig
from grace.evaluation.runner import evaluate_encoders
from grace.model.gguf import gguf_digest
from grace.model.loading import TINY_RANDOM, load_policy, load_tokenizer, packaged_gguf_path
from grace.model.sources import FORMS, PACKAGED_SMOLLM2, ModelSourceError, resolve_source
from grace.training.validation import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gguf_dir(tmp_path) -> Path:
    """A directory holding one .gguf file (a link to the packaged SmolLM2: 98 MB, never copied)."""
    directory = tmp_path / "my-model"
    directory.mkdir()
    (directory / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(packaged_gguf_path())
    return directory


@pytest.fixture
def tiny_dir(tmp_path, tiny) -> Path:
    directory = tmp_path / "tiny-model"
    tiny[0].save_pretrained(directory)
    tiny[1].save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------- the resolver


def test_every_accepted_form_resolves_to_what_it_names(tmp_path, gguf_dir, tiny_dir):
    gguf = next(gguf_dir.glob("*.gguf"))
    run = tmp_path / "run"
    for step in (2, 10):
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step}" / "config.json").write_text("{}")
    (run / "checkpoints" / ".step-11-staging").mkdir()  # an unfinished save is no checkpoint
    cases = {
        PACKAGED_SMOLLM2: ("packaged", packaged_gguf_path()),
        TINY_RANDOM: ("tiny-random", None),
        "HuggingFaceTB/SmolLM2-135M-Instruct": ("hub", None),
        str(tiny_dir): ("directory", tiny_dir),
        str(run): ("directory", run / "checkpoints" / "step-10"),
        str(gguf_dir): ("gguf", gguf),
        str(gguf): ("gguf", gguf),
    }
    for source, (kind, path) in cases.items():
        resolved = resolve_source(source)
        assert (resolved.kind, resolved.path) == (kind, path), source
    assert resolve_model_dir(gguf_dir) == gguf and resolve_model_dir(run) == run / "checkpoints" / "step-10"
    assert resolve_model_dir(PACKAGED_SMOLLM2) is None


def not_a_model(tmp_path: Path, case: str) -> tuple[str, str]:
    """(source, what the message must say it found) for each kind of path that is no model."""
    if case == "missing":
        return str(tmp_path / "nowhere" / "model"), "does not exist"
    if case == "missing gguf":
        return "model.Q4_0.gguf", "does not exist"
    if case == "other file":
        (tmp_path / "weights.bin").write_bytes(b"\0")
        return str(tmp_path / "weights.bin"), "is a file but not a .gguf file"
    if case == "empty directory":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), "is a directory with no config.json, no checkpoints/step-N and no .gguf file"
    if case == "two gguf files":
        (tmp_path / "two").mkdir()
        for name in ("a.Q4_0.gguf", "b.Q8_0.gguf"):
            (tmp_path / "two" / name).write_bytes(b"GGUF")
        return str(tmp_path / "two"), "holding 2 .gguf files (a.Q4_0.gguf, b.Q8_0.gguf): give the one to load"
    if case == "run without checkpoint":
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        return str(tmp_path / "run"), "a training run with no finished checkpoint yet"
    assert case == "unknown packaged name"
    return "packaged:qwen", f"unknown packaged model 'packaged:qwen': the packaged model is '{PACKAGED_SMOLLM2}'"


CASES = ["missing", "missing gguf", "other file", "empty directory", "two gguf files", "run without checkpoint",
         "unknown packaged name"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_anything_else_is_one_line_saying_what_is_there_and_which_forms_work(tmp_path, case):
    source, found = not_a_model(tmp_path, case)
    with pytest.raises(ModelSourceError) as raised:
        resolve_source(source)
    message = str(raised.value)
    assert found in message and "\n" not in message
    if case != "unknown packaged name":
        assert message.endswith(FORMS)
    assert isinstance(raised.value, FileNotFoundError)  # what callers already catch for a missing path


# ---------------------------------------------------------------------- every entry point uses it


@pytest.mark.parametrize("case", CASES)
def test_every_entry_point_refuses_a_source_with_the_resolvers_line(tmp_path, monkeypatch, case, capsys):
    source, found = not_a_model(tmp_path, case)
    said = re.escape(found)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.txt").write_text("a text\n")
    with pytest.raises(ConfigError, match=re.escape(f"model.source={source!r}: ") + f".*{said}"):  # grace-train
        validate(compose_config(f"model.source={source}"))
    for load in (load_policy, load_tokenizer, GraceEncoder.from_pretrained, resolve_model_dir):
        with pytest.raises(ModelSourceError, match=said):
            load(source)
    with pytest.raises(ModelSourceError, match=said):  # grace-eval, before any row runs
        evaluate_encoders([ModelConfig(source=TINY_RANDOM), ModelConfig(source=source)], ["GraceLeeSTS"], tmp_path)
    assert not (tmp_path / "results.md").exists()
    for program, main, args in [
        ("grace-encode", encode_main, ["texts.txt", "out", "--model", source, "--no-cache", "--quiet"]),
        ("grace-index", index_main, ["build", "texts.txt", "index", "--model", source, "--no-cache", "--quiet"]),
        ("grace-index", index_main, ["search", "index", "query", "--model", source]),
    ]:
        if args[0] == "search":  # an index to search: built with the tiny model
            built = ["build", "texts.txt", "index", "--model", TINY_RANDOM, "--no-rationale", "--no-cache", "--quiet"]
            assert index_main(built) == 0, capsys.readouterr().err
            capsys.readouterr()
        assert main(args) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"{program}: error: ") and found in error and error.count("\n") == 1


def test_training_accepts_a_gguf_file_and_a_directory_holding_one(gguf_dir):
    for source in (gguf_dir, next(gguf_dir.glob("*.gguf"))):
        validate(compose_config(f"model.source={source}"))  # used to say the path "does not exist"
        assert load_tokenizer(str(source)).eos_token == "<|im_end|>"  # what the trainer checks data with


# ---------------------------------------------------------------------- the converted-copy cache


def test_the_converted_copy_is_keyed_by_content_not_by_path(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "elsewhere" / "b.gguf"
    b.parent.mkdir()
    a.write_bytes(b"GGUF one")
    b.write_bytes(b"GGUF one")
    (tmp_path / "link.gguf").symlink_to(a)
    assert gguf_digest(a) == gguf_digest(b) == gguf_digest(tmp_path / "link.gguf")  # one conversion for all
    before = gguf_digest(a)
    a.write_bytes(b"GGUF two")  # same size, new content: converted again
    os.utime(a, ns=(1, 1))
    assert gguf_digest(a) != before


@pytest.mark.slow
def test_a_gguf_file_converts_once_and_loads_at_every_entry_point(tmp_path, gguf_dir, monkeypatch):
    """grace-encode in a fresh process with a fresh cache (the conversion, ~30 s), then from_pretrained."""
    cache = tmp_path / "cache"
    gguf = next(gguf_dir.glob("*.gguf"))
    (tmp_path / "texts.txt").write_text("Leaves turn light into sugar.\n")
    env = {**os.environ, "GRACE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "grace.cli.encode", str(tmp_path / "texts.txt"), str(tmp_path / "out"), "--model",
         str(gguf_dir), "--no-rationale", "--no-cache", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    converted = list((cache / "models").glob("gguf-*"))
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    monkeypatch.setenv("GRACE_CACHE", str(cache))
    encoder = GraceEncoder.from_pretrained(gguf, document=EmbeddingConfig(rationale=False))
    assert list((cache / "models").glob("*")) == converted  # reused, not converted again
    packaged = GraceEncoder.from_pretrained(PACKAGED_SMOLLM2, document=EmbeddingConfig(rationale=False))
    assert encoder.fingerprint == packaged.fingerprint
    vectors = np.load(tmp_path / "out" / "embeddings.npy")
    np.testing.assert_allclose(vectors[0], encoder.encode("Leaves turn light into sugar."), atol=1e-5)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["input"]["model"] == str(gguf_dir)
