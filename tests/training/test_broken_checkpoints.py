"""Damaged checkpoints (a copy cut short, a missing or changed file) are found by their file manifest: a resume
falls back to the newest intact one naming the damaged one, loading one as an encoder fails clearly; a full
disk while saving stops with a message and loses nothing already written; manifest-less checkpoints load."""
from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from train_helpers import compose_config, read_metrics, without_timing

from grace.config import ConfigError
from grace.embedding.encoder import GraceEncoder
from grace.storage.integrity import MANIFEST_FILE, BrokenDirectory, check_file_manifest
from grace.training.checkpoint import STATE_FILE, checkpoint_problems, latest_checkpoint, newest_intact_checkpoint
from grace.training.trainer import train


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (lambda c: truncate(c / "model.safetensors"), "model.safetensors has .* bytes, .* were written \\(truncated\\)"),
    "missing tokenizer": (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "changed trainer state": (lambda c: flip_a_byte(c / STATE_FILE), "trainer_state.pt differs from what was written"),
    "unreadable manifest": (lambda c: (c / MANIFEST_FILE).write_text("{"), "file_manifest.json is unreadable"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three steps, a checkpoint each; and the same run's four steps straight, for the exact-resume check."""
    root = tmp_path_factory.mktemp("broken")
    torch.set_num_threads(1)  # as the tests that resume these runs (conftest's _threads runs after module fixtures)
    train(compose_config("trainer.max_steps=3", "trainer.keep_last=3"), root / "run")
    train(compose_config("trainer.max_steps=4"), root / "straight")
    return root


def test_every_checkpoint_carries_a_manifest_of_its_files_written_last(run):
    checkpoint = latest_checkpoint(run / "run")
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
    on_disk = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert set(manifest) == on_disk and {"model.safetensors", STATE_FILE, "tokenizer.json"} <= on_disk
    assert all(entry["bytes"] == (checkpoint / name).stat().st_size for name, entry in manifest.items())
    # The settings files are the user's to edit (their readers check them); every other file is hashed.
    assert {name for name, entry in manifest.items() if entry.get("editable")} == {"grace_encoder.json", "train_config.yaml"}
    assert all("sha256" in entry for entry in manifest.values() if not entry.get("editable"))
    assert check_file_manifest(checkpoint) == [] and checkpoint_problems(checkpoint) == []


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint_naming_the_damaged_one(run, tmp_path, capsys, damage):
    broken_run = tmp_path / "run"
    shutil.copytree(run / "run", broken_run)
    harm, problem = DAMAGE[damage]
    harm(broken_run / "checkpoints" / "step-3")
    found, broken = newest_intact_checkpoint(broken_run)
    assert found.name == "step-2" and [b.name for b, _ in broken] == ["step-3"]
    train(compose_config("trainer.max_steps=4", "trainer.resume=auto"), broken_run)
    err = capsys.readouterr().err
    assert f"skipping damaged checkpoint {broken_run / 'checkpoints' / 'step-3'}" in err
    assert __import__("re").search(problem, err), err
    # Continued from step 2: steps 3 and 4 again, equal to the uninterrupted run.
    assert without_timing(read_metrics(broken_run)) == without_timing(read_metrics(run / "straight"))
    a, b = GraceEncoder.from_pretrained(run / "straight").model.state_dict(), GraceEncoder.from_pretrained(broken_run).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["truncated weights", "missing tokenizer"])
def test_loading_a_damaged_checkpoint_as_an_encoder_names_the_damage(run, tmp_path, damage):
    checkpoint = tmp_path / "step-3"
    shutil.copytree(run / "run" / "checkpoints" / "step-3", checkpoint)
    harm, problem = DAMAGE[damage]
    harm(checkpoint)
    with pytest.raises(BrokenDirectory, match=f"the model directory {checkpoint} is damaged: {problem}"):
        GraceEncoder.from_pretrained(checkpoint)


def test_a_damaged_checkpoint_named_for_resume_is_refused(run, tmp_path):
    shutil.copytree(run / "run", tmp_path / "run")
    damaged = tmp_path / "run" / "checkpoints" / "step-2"
    truncate(damaged / "model.safetensors")
    with pytest.raises(ConfigError, match=f"trainer.resume={damaged}: the checkpoint is damaged \\(model.safetensors"):
        train(compose_config("trainer.max_steps=4", f"trainer.resume={damaged}"), tmp_path / "other")


def test_a_checkpoint_without_a_manifest_is_trusted_as_before(run, tmp_path):
    shutil.copytree(run / "run", tmp_path / "run")
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        (checkpoint / MANIFEST_FILE).unlink()  # as written by grace 0.2 and older
    assert newest_intact_checkpoint(tmp_path / "run")[0].name == "step-3"
    GraceEncoder.from_pretrained(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "step-3" / STATE_FILE).unlink()
    assert checkpoint_problems(tmp_path / "run" / "checkpoints" / "step-3") == [f"{STATE_FILE} is missing"]


def test_a_full_disk_during_a_save_stops_with_a_message_and_keeps_the_earlier_checkpoints(run, tmp_path, monkeypatch):
    shutil.copytree(run / "run", tmp_path / "run")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("grace.training.checkpoint.torch.save", full_disk)
    with pytest.raises(OSError, match="no space left on the device while writing checkpoint .*step-4 .*newest: .*step-3") as caught:
        train(compose_config("trainer.max_steps=4", "trainer.resume=auto", "trainer.keep_last=3"), tmp_path / "run")
    assert caught.value.errno == errno.ENOSPC
    assert latest_checkpoint(tmp_path / "run").name == "step-3" and checkpoint_problems(latest_checkpoint(tmp_path / "run")) == []
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*"))  # no half-written staging left behind
    monkeypatch.undo()  # space freed: the same command continues from step 3
    train(compose_config("trainer.max_steps=4", "trainer.resume=auto", "trainer.keep_last=3"), tmp_path / "run")
    assert without_timing(read_metrics(tmp_path / "run")) == without_timing(read_metrics(run / "straight"))
