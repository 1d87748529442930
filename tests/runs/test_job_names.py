"""Sweep jobs get one flat, readable, bounded directory whatever their override values hold.

Slashes, spaces, quotes, very long strings and non-ASCII letters in an override value must not nest a
job's directory, overflow the 255-byte file-name limit (which used to crash the whole sweep inside
Hydra), or leak into the wandb run name and the checkpoint's encoder name; the overrides are recorded
in full in the job's ``job.yaml``. A job whose directory cannot be made fails alone.
"""
from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import SMALL, grace_train

from grace.runs.job_names import DIR_CHARS, JOB_FILE, LABEL_CHARS, job_dirname, job_label
from grace.storage.safe_names import readable_name
from grace.training.checkpoint import encoder_name

AWKWARD = {
    "slashes": "data.train_file=/x/a.jsonl",
    "spaces and quotes": "embedding.system_prompt='Say \"why\", then stop.'",
    "very long": "embedding.system_prompt=" + "explain the text in detail " * 20,
    "non-ascii": "logger.tags=[naïve,日本語,😀]",
    "dots": "a=../..",
}


@pytest.mark.parametrize("overrides", AWKWARD.values(), ids=AWKWARD.keys())
def test_a_job_name_is_flat_bounded_ascii_and_says_what_it_ran(overrides):
    name, label = job_dirname(7, overrides), job_label(overrides)
    assert name.startswith("7_") and "/" not in name and name.isascii() and len(name) <= 2 + DIR_CHARS + 9
    assert " " not in name and "'" not in name and '"' not in name and name not in (".", "..")
    assert overrides.split("=")[0] in name  # the key stays readable
    assert "/" not in label and label.isascii() and len(label) <= LABEL_CHARS + 9 < 128  # wandb's limit
    assert label == readable_name(overrides, LABEL_CHARS) and name[2:].startswith(label[:LABEL_CHARS])
    assert encoder_name(overrides, 3) == readable_name(overrides, 60) + "-step-3" and "/" not in encoder_name(overrides, 3)


def test_safe_short_names_are_kept_and_different_overrides_never_share_a_name():
    assert job_dirname(0, "reward=paper,algorithm=rloo") == "0_reward=paper,algorithm=rloo"
    assert job_dirname(3, "") == "3_" and job_label("") == "default"
    assert readable_name("naïve", 40).startswith("naive-")  # accents dropped, the change marked by a hash
    same_slug = ["data.train_file=/x/a b", "data.train_file=/x/a/b", "data.train_file=-x-a-b"]
    assert len({job_dirname(0, o) for o in same_slug}) == 3
    long = ["k=" + "v" * 300 + "1", "k=" + "v" * 300 + "2"]
    assert len({job_dirname(0, o) for o in long}) == 2


def unsupervised_data(path):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["Cats sleep.", "Rivers flow.", "Bread rises."]))
    return path


def test_the_issue_sweep_gets_flat_job_directories_and_a_blocked_job_fails_alone(tmp_path):
    """``data.train_file=/x/a.jsonl,/x/b.jsonl,/x/c.jsonl trainer.output_dir=OUT``; job 0's directory is
    taken by a file, so it cannot be made: job 0 fails, jobs 1 and 2 run."""
    (tmp_path / "data").mkdir()
    files = [unsupervised_data(tmp_path / "data" / name) for name in ("a.jsonl", "b.jsonl", "c.jsonl")]
    out = tmp_path / "OUT"
    # No boolean values: Hydra rewrites "false" as "False" in a job's overrides, and the names are predicted here.
    args = ["model=tiny-random", "mode=unsupervised", "trainer.max_steps=1", "rollout.max_new_tokens=8",
            "trainer.batch_size=2", "data.limit=16"]  # fmt: skip
    sweep = f"data.train_file={','.join(map(str, files))}"
    overrides = [",".join(sorted([f"data.train_file={f}", *args])) for f in files]  # Hydra's override_dirname
    names = [job_dirname(n, o) for n, o in enumerate(overrides)]
    out.mkdir()
    (out / names[0]).write_text("in the way")
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    done = grace_train("-m", *args, sweep, f"trainer.output_dir={out}", sweep_dir, cwd=tmp_path)
    assert done.returncode != 0  # Hydra reports the failed job once the sweep is over
    assert f"grace-train: job 0 ({overrides[0]}) failed: " in done.stderr  # named by its overrides in full
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # flat: one entry per job, no nesting
    for name, data in zip(names[1:], files[1:]):
        job = out / name
        assert len((job / "metrics.jsonl").read_text().splitlines()) == 1
        record = yaml.safe_load((job / JOB_FILE).read_text())
        assert f"data.train_file={data}" in record["overrides"] and record["num"] == names.index(name)
        encoder = json.loads((job / "checkpoints" / "step-1" / "grace_encoder.json").read_text())["name"]
        label = job_label(record["override_dirname"])
        assert "/" not in encoder and encoder == encoder_name(label, 1)
        runs = list((job / "wandb").glob("offline-run-*"))
        wandb_record = (runs[0] / f"run-{runs[0].name.split('-')[-1]}.wandb").read_bytes()
        assert label.encode() in wandb_record  # the run is named by the flat label...
        assert record["override_dirname"].encode() not in wandb_record  # ...not by the raw overrides
    hydra_jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != "report")
    assert hydra_jobs == sorted(names)  # Hydra's own job directories (its .hydra records) are flat too


def test_hydras_own_job_directory_is_flat_and_bounded_for_long_awkward_values(tmp_path):
    """No trainer.output_dir: Hydra makes the job directory from hydra.sweep.subdir (conf/train.yaml). A
    raw 300-character override used to overflow the file-name limit and crash the sweep."""
    data = unsupervised_data(tmp_path / "a b.jsonl")
    prompt = "Explain the text, naïvely and \"in quotes\", " + "then in detail " * 20
    sweep = tmp_path / "sweep"
    done = grace_train(
        "-m", "model=tiny-random", "mode=unsupervised", "trainer.max_steps=1", *SMALL, f"data.train_file={data}",
        f"embedding.system_prompt='{prompt}'", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and p.name != "report"]  # report/: the sweep's own
    assert job.name.startswith("0_") and len(job.name) <= 2 + DIR_CHARS + 9 and job.name.isascii()
    assert len((job / "metrics.jsonl").read_text().splitlines()) == 1
    record = yaml.safe_load((job / JOB_FILE).read_text())
    assert f"embedding.system_prompt='{prompt}'" in record["overrides"]  # in full, non-ASCII included
    assert (job / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.parametrize("config_name, register", [("train", "grace.cli.train"), ("evaluate", "grace.cli.eval")])
def test_both_apps_name_their_sweep_jobs_with_the_resolver(config_name, register):
    """conf/train.yaml and conf/evaluate.yaml: hydra.sweep.subdir goes through grace.runs.job_names.job_dirname."""
    import importlib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from grace.cli.train import CONF_DIR

    importlib.import_module(register)  # registers the resolver, as running the app does
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    overrides = "eval.models=[{source: /x/run, label: 'naïve run'}]"
    with open_dict(cfg):
        cfg.hydra.job.num, cfg.hydra.job.override_dirname = 4, overrides
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == job_dirname(4, overrides)
