"""Resuming with changed settings: refused when they change the trajectory, accepted only by name.

The issue's example: 1 step with ``trainer.batch_size=4 seed=0 data.train_file=a.jsonl``, then
``trainer.resume=auto trainer.max_steps=2 trainer.batch_size=2 seed=7 data.train_file=b.jsonl`` into the
same directory used to resume silently, reuse the data position against another file and batch size,
and overwrite ``config.yaml``.
"""
from __future__ import annotations

import json

import pytest
import yaml
from train_helpers import compose_config, read_metrics

from grace.config import ConfigError, TrainConfig
from grace.training.checkpoint import TRAIN_CONFIG_FILE, latest_checkpoint
from grace.training.resume import FREE, changed_settings, resolved_config
from grace.training.trainer import train

TRIPLETS = [
    {"query": f"What is {thing}?", "positive": f"{thing.capitalize()} is {what}.", "negative": "A stock index."}
    for thing, what in [("a cat", "a small animal"), ("rain", "water falling"), ("bread", "baked dough"),
                        ("a river", "flowing water"), ("a poem", "verse"), ("a comet", "icy rock")]
]  # fmt: skip


def data_file(path):
    path.write_text("".join(json.dumps(t) + "\n" for t in TRIPLETS))
    return str(path)


def no_load(*args, **kwargs):
    raise AssertionError("loaded a tokenizer or model before the resume was checked")


@pytest.fixture
def first_run(tmp_path):
    """The issue's first run: one step, batch 4, seed 0, a.jsonl. Returns (output dir, a.jsonl, b.jsonl)."""
    a, b = data_file(tmp_path / "a.jsonl"), data_file(tmp_path / "b.jsonl")
    out = tmp_path / "run"
    train(compose_config("trainer.max_steps=1", "trainer.batch_size=4", "seed=0", f"data.train_file={a}"), out)
    return out, a, b


def test_a_changed_trajectory_setting_stops_the_resume_naming_each_change(first_run, monkeypatch):
    out, a, b = first_run
    first_config = (out / "config.yaml").read_text()
    monkeypatch.setattr("grace.training.trainer.load_tokenizer", no_load)
    monkeypatch.setattr("grace.training.trainer.load_policy", no_load)
    again = ["trainer.resume=auto", "trainer.max_steps=2", "trainer.batch_size=2", "seed=7", f"data.train_file={b}"]
    with pytest.raises(ConfigError) as raised:
        train(compose_config(*again), out)
    message = str(raised.value)
    for change in ["trainer.batch_size: 4 -> 2", "seed: 0 -> 7", f"data.train_file: {a!r} -> {b!r}"]:
        assert change in message
    assert "trainer.max_steps" not in message.split(". Set them back")[0]  # free under a constant schedule
    assert "trainer.resume_accept_changes=[data.train_file,trainer.batch_size,seed]" in message
    assert (out / "config.yaml").read_text() == first_config  # nothing of the first start is lost
    assert [p.name for p in (out / "configs").iterdir()] == ["start-1.yaml"]
    assert [m["step"] for m in read_metrics(out)] == [1]


def test_changes_accepted_by_name_resume_and_every_start_keeps_its_config(first_run, capsys):
    out, a, b = first_run
    accept = "trainer.resume_accept_changes=[trainer.batch_size,seed,data.train_file]"
    again = ["trainer.resume=auto", "trainer.max_steps=2", "trainer.batch_size=2", "seed=7", f"data.train_file={b}"]
    assert train(compose_config(*again, accept), out).steps_done == 2
    assert "with accepted changes: " in capsys.readouterr().out
    starts = {p.name: yaml.safe_load(p.read_text()) for p in (out / "configs").iterdir()}
    assert sorted(starts) == ["start-1.yaml", "start-2.yaml"]
    assert (starts["start-1.yaml"]["seed"], starts["start-1.yaml"]["trainer"]["batch_size"]) == (0, 4)
    assert (starts["start-2.yaml"]["seed"], starts["start-2.yaml"]["trainer"]["batch_size"]) == (7, 2)
    assert (out / "configs" / "start-2.yaml").read_text().startswith("# start 2 of this run, resumed from ")
    assert yaml.safe_load((out / "config.yaml").read_text()) == starts["start-2.yaml"]  # the newest start
    recorded = yaml.safe_load((latest_checkpoint(out) / TRAIN_CONFIG_FILE).read_text())
    assert recorded == resolved_config(compose_config(*again, accept))  # each checkpoint: what trained it


def test_settings_that_leave_the_trajectory_alone_may_change(first_run):
    out, a, _ = first_run
    free = ["trainer.max_steps=2", "trainer.save_every=7", "trainer.keep_last=3", "trainer.rationale_log_every=5",
            "trainer.micro_batch_size=3", "rollout.batch_size=5", "logger.progress_bar=true", "final_eval.max_new_tokens=4"]
    same = ["trainer.batch_size=4", "seed=0", f"data.train_file={a}"]
    assert train(compose_config("trainer.resume=auto", *same, *free), out).steps_done == 2  # fmt: skip


def test_max_steps_must_match_under_a_cosine_schedule(tmp_path, monkeypatch):
    """It sets the length of the cosine curve: a resume with another would change every later rate."""
    cosine = ["trainer.schedule=cosine", "trainer.max_steps=1"]
    train(compose_config(*cosine), tmp_path)
    monkeypatch.setattr("grace.training.trainer.load_policy", no_load)
    with pytest.raises(ConfigError, match="trainer.max_steps: 1 -> 3"):
        train(compose_config("trainer.schedule=cosine", "trainer.max_steps=3", "trainer.resume=auto"), tmp_path)


def test_an_explicit_checkpoint_from_another_run_is_checked_too(first_run, tmp_path, monkeypatch):
    out, a, _ = first_run
    monkeypatch.setattr("grace.training.trainer.load_policy", no_load)
    checkpoint = latest_checkpoint(out)
    with pytest.raises(ConfigError, match=r"resuming .*step-1 with settings .*algorithm.estimator: 'grpo' -> 'rloo'"):
        train(compose_config(f"trainer.resume={checkpoint}", "trainer.batch_size=4", f"data.train_file={a}",
                             "algorithm=rloo", "trainer.max_steps=2"), tmp_path / "elsewhere")  # fmt: skip


def test_a_checkpoint_from_before_configs_were_recorded_resumes_with_a_warning(first_run):
    out, a, b = first_run
    (latest_checkpoint(out) / TRAIN_CONFIG_FILE).unlink()
    (out / "configs").rename(out / "old-configs")  # and a run directory from then: config.yaml alone
    with pytest.warns(UserWarning, match="records no training config"):
        train(compose_config("trainer.resume=auto", "trainer.max_steps=2", "seed=3", f"data.train_file={b}"), out)
    assert sorted(p.name for p in (out / "configs").iterdir()) == ["start-1.yaml", "start-2.yaml"]
    assert yaml.safe_load((out / "configs" / "start-1.yaml").read_text())["seed"] == 0  # the old config.yaml


def test_an_accepted_name_that_is_no_setting_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="resume_accept_changes names 'sed', which is no setting"):
        train(compose_config("trainer.resume_accept_changes=[sed]"), tmp_path)


# ---------------------------------------------------------------------- the comparison itself


def test_the_comparison_denies_by_default_and_allows_only_the_free_list():
    recorded = resolved_config(TrainConfig())
    current = resolved_config(TrainConfig())
    current["added_later"] = {"name": "simcse"}  # a section added later by someone who never heard of resume
    recorded["added_later"] = {"name": "grace"}
    current["trainer"]["keep_last"] = 9
    current["logger"]["tags"] = ["x"]
    current["rollout"]["positive"]["temperature"] = 0.5
    assert [str(c) for c in changed_settings(recorded, current)] == [
        "rollout.positive.temperature: 1.0 -> 0.5", "added_later.name: 'grace' -> 'simcse'"
    ]


def test_a_setting_the_checkpoint_predates_counts_as_unchanged_only_at_its_default():
    recorded, current = resolved_config(TrainConfig()), resolved_config(TrainConfig())
    del recorded["algorithm"]["entropy_coef"]
    assert changed_settings(recorded, current) == []
    current["algorithm"]["entropy_coef"] = 0.1
    assert [str(c) for c in changed_settings(recorded, current)] == ["algorithm.entropy_coef: (not recorded) -> 0.1"]


def test_every_free_setting_names_a_setting():
    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    settings = list(keys(resolved_config(TrainConfig())))
    for free in FREE:
        assert any(key == free or key.startswith(free + ".") for key in settings), free
