"""End-to-end: the real ``grace-train`` command (Hydra, wandb offline) on the tiny model."""
import json
import re

import pytest
from cli_helpers import SMALL, grace_train


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_the_documented_command_trains_and_writes_its_outputs(tmp_path, mode):
    out = tmp_path / "run"
    done = grace_train("model=tiny-random", "trainer.max_steps=2", "logger=none", f"trainer.output_dir={out}", f"mode={mode}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"outputs: {out}" in done.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "rationales.jsonl").is_file() and (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()
    assert not (out / "wandb").exists()  # logger=none


@pytest.mark.parametrize("objective", ["contrastive", "simcse"])
def test_a_baseline_objective_trains_from_the_command_line_and_its_checkpoint_embeds_without_a_rationale(tmp_path, objective):
    from grace.embedding.encoder import GraceEncoder

    out = tmp_path / "run"
    mode = "unsupervised" if objective == "simcse" else "supervised"
    args = ["model=tiny-random", f"objective={objective}", f"mode={mode}", "trainer.max_steps=2", "logger=none", f"trainer.output_dir={out}"]
    done = grace_train(*args, *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss/infonce"] > 0 for m in metrics)
    assert not (out / "rationales.jsonl").exists()  # no rationale is written
    assert "sweep value: infonce/accuracy = " in done.stdout  # sweep.metric=auto reads the objective's own score
    encoder = GraceEncoder.from_pretrained(out)
    assert encoder.configs["document"].rationale is False
    assert encoder.explain(["a test sentence"]) == [""] and encoder.encode(["a test sentence"]).shape == (1, 64)


def test_a_sweep_gives_each_job_its_own_directory_metrics_and_finished_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    done = grace_train("-m", "model=tiny-random", "reward=paper,contrastive", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "report")
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    assert (sweep / "report" / "report.md").is_file()  # the sweep's report, both jobs overlaid
    for job, reward in zip(jobs, ["paper", "contrastive"]):
        assert f"reward={reward}" in job.name
        assert len((job / "metrics.jsonl").read_text().splitlines()) == 2
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        assert "stream: all finished" in (runs[0] / "logs" / "debug-internal.log").read_text()
        record = (runs[0] / f"run-{runs[0].name.split('-')[-1]}.wandb").read_bytes()
        assert f"reward={reward}".encode() in record  # the run is named from its overrides
        assert f"{sweep.parent.name}/{sweep.name}".encode() in record  # and grouped by its sweep (date/time by default)
        assert json.loads((job / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_a_misspelt_key_fails_at_start_up_naming_it(tmp_path):
    done = grace_train("model=tiny-random", "trainer.max_stepz=2", cwd=tmp_path)
    assert done.returncode != 0
    assert "max_stepz" in done.stderr and "not in" in done.stderr


def test_an_impossible_setting_fails_with_what_to_change(tmp_path):
    done = grace_train("model=tiny-random", "logger=none", "rollout.num_samples=1", f"trainer.output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr and "set rollout.num_samples" in done.stderr


def test_an_impossible_job_fails_alone_and_the_rest_of_the_sweep_runs(tmp_path):
    sweep = tmp_path / "sweep"
    done = grace_train("-m", "model=tiny-random", "rollout.num_samples=1,2", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", *SMALL, cwd=tmp_path)
    assert done.returncode != 0  # Hydra reports the failed job once the sweep is over
    assert re.search(r"grace-train: job 0 \(.*rollout.num_samples=1.*\) failed: invalid configuration: algorithm=grpo", done.stderr)
    first, second = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert first.name.startswith("0_") and not (first / "metrics.jsonl").exists()
    assert second.name.startswith("1_") and "rollout.num_samples=2" in second.name
    assert len((second / "metrics.jsonl").read_text().splitlines()) == 2
    runs = list((second / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and "stream: all finished" in (runs[0] / "logs" / "debug-internal.log").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["data.train_file={data}"], "grace-train: {data}, line 2: malformed JSON"),
        (["model.source=nosuch/model"], "grace-train: no local directory 'nosuch/model', and it could not be loaded as a hub id"),
    ],
)
def test_bad_data_or_an_unloadable_model_ends_a_run_with_one_line(tmp_path, args, message):
    data = tmp_path / "train.jsonl"
    data.write_text('{"query": "q", "positive": "p", "negative": "n"}\n{"query": \n')
    args = [arg.format(data=data) for arg in args]
    done = grace_train("model=tiny-random", "logger=none", f"trainer.output_dir={tmp_path / 'out'}", *SMALL, *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message.format(data=data) in done.stderr
    assert "Traceback" not in done.stderr and "grace-train:" in done.stderr.strip().splitlines()[-1]


def test_a_run_with_final_eval_prints_the_before_after_table(tmp_path):
    out = tmp_path / "run"
    final_eval = ["final_eval.enabled=true", "final_eval.tasks=[GraceLeeSTS]", "final_eval.max_new_tokens=2"]
    done = grace_train("model=tiny-random", "trainer.max_steps=1", "logger=none", f"trainer.output_dir={out}", *SMALL, *final_eval, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = done.stdout.split(f"before/after training ({out / 'eval'}):")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "LeeSTS" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| base (no rationale)", "| base + rationale", "| GRACE-trained + rationale"]
    assert (out / "eval" / "results.md").is_file()


@pytest.mark.slow
def test_the_main_job_config_trains_the_packaged_model_and_prints_its_table(tmp_path):
    """`make run` (experiment=cpu_small), shortened to one step and 4-token evaluation rationales."""
    out = tmp_path / "run"
    done = grace_train(
        "experiment=cpu_small", "trainer.max_steps=1", "logger=none", "logger.progress_bar=false",
        f"trainer.output_dir={out}", "final_eval.max_new_tokens=4", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped 8 (8 over the token budget)" in done.stdout  # data.on_error=skip reports what it dropped
    assert "| GRACE-trained + rationale | yes |" in done.stdout
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert metrics["rollout/rows"] == 24 and metrics["reward/contrastive_within_group_std"] > 0
