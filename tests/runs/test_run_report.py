"""The run report (grace-report, and the one grace-train writes) and the final evaluation in wandb.

One 2-step tiny run with a final evaluation and wandb (offline) serves every test here: its report holds
every plot as a PNG that opens, the evaluation table and the sample rationales; its wandb run holds the
before/after scores; grace-report overlays several runs and picks the steps asked for.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import SMALL, grace_train
from PIL import Image
from wandb_offline import exit_code, logged_keys, run_file, summary

from grace.runs.plots import figure_specs
from grace.runs.report import write_report

EXPECTED_PLOTS = {"reward_terms.png", "reward_by_role.png", "advantages.png", "rationales.png", "policy.png", "timing.png"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    done = grace_train(
        "model=tiny-random", "trainer.max_steps=2", "trainer.rationale_log_every=1", f"trainer.output_dir={out}",
        "final_eval.enabled=true", "final_eval.tasks=[GraceLeeSTS]", "final_eval.max_new_tokens=2", *SMALL,
        cwd=out.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (out / "stdout.txt").write_text(done.stdout)
    return out


def _assert_pngs(directory: Path, expected: set[str]) -> None:
    files = {p.name for p in directory.glob("*.png")}
    assert expected <= files
    for name in files:
        with Image.open(directory / name) as image:  # a real PNG, not just bytes
            image.verify()
        with Image.open(directory / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        assert f"]({name})" in (directory / "report.md").read_text()  # every plot is linked


def test_a_run_writes_its_report_with_every_plot_the_table_and_rationales(run):
    report = run / "report" / "report.md"
    assert report.is_file() and f"report: {report}" in (run / "stdout.txt").read_text()
    _assert_pngs(run / "report", EXPECTED_PLOTS)
    text = report.read_text()
    assert "| reward.tau | 0.1 |" in text  # the run's key settings
    table = (run / "eval" / "results.md").read_text().strip()
    assert table in text and "| GRACE-trained + rationale | yes |" in text
    assert "### step 1" in text and "### step 2" in text  # first and last logged step
    first = json.loads((run / "rationales.jsonl").read_text().splitlines()[0])
    assert f"> *rationale:* {first['rationale'].strip().splitlines()[0].replace('<', '&lt;')}" in text


def test_the_final_evaluation_is_in_the_runs_wandb_summary_and_table(run):
    results = json.loads((run / "eval" / "results.json").read_text())
    trained = results["rows"][-1]
    wandb_run = run_file(run)
    values = summary(wandb_run)
    assert values["final_eval/mean"] == pytest.approx(trained["mean"])
    assert values["final_eval/GraceLeeSTS"] == pytest.approx(trained["scores"]["GraceLeeSTS"])
    assert values["final_eval/base_no_rationale/GraceLeeSTS"] == pytest.approx(results["rows"][0]["scores"]["GraceLeeSTS"])
    assert values["final_eval/base_rationale/mean"] == pytest.approx(results["rows"][1]["mean"])
    assert values["sweep/metric"] == "final_eval/mean" and values["sweep/value"] == pytest.approx(trained["mean"])
    assert values["final_eval/table/_type"] == "table-file" and values["final_eval/table/nrows"] == 3
    assert "final_eval/table/path" in logged_keys(wandb_run)  # logged as a wandb.Table at the last step
    assert exit_code(wandb_run) == 0


def test_the_run_summary_says_where_everything_is(run):
    stdout = (run / "stdout.txt").read_text()
    assert f"outputs: {run}" in stdout and f"last checkpoint: {run / 'checkpoints' / 'step-2'}" in stdout
    assert f"wandb: {run_file(run).parent}" in stdout and "reward/total_mean: " in stdout
    assert "sweep value: final_eval/mean = " in stdout and f"before/after training ({run / 'eval'}):" in stdout


def grace_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grace.cli.report", *args], capture_output=True, text=True, timeout=300)


def test_grace_report_overlays_several_runs_and_shows_the_steps_asked_for(run, tmp_path):
    other = tmp_path / "sweep" / "1_seed=1"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("report", "checkpoints", "wandb"))
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("seed: 0", "seed: 1"))
    shutil.copytree(run, tmp_path / "sweep" / "0_seed=0", ignore=shutil.ignore_patterns("report", "checkpoints", "wandb"))
    done = grace_report(str(tmp_path / "sweep"), "--steps", "2")  # a sweep folder: every run inside
    assert done.returncode == 0, done.stderr
    out = tmp_path / "sweep" / "report"
    assert done.stdout.strip() == f"report: {out / 'report.md'}"
    _assert_pngs(out, EXPECTED_PLOTS)
    text = (out / "report.md").read_text()
    assert "# GRACE run report (2 runs)" in text
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert [row.split("]")[0] for row in rows] == ["| [0_seed=0", "| [1_seed=1"]
    assert rows[1].rstrip(" |").endswith("| 1") and "| seed |" in text  # the one setting that differs
    assert "### 0_seed=0, step 2" in text and "step 1" not in text


def test_a_report_plots_periodic_eval_and_unknown_metrics_too(tmp_path):
    """Held-out scores logged every other step (eval/*) and a metric of no known group (another objective)."""
    rows = [{"step": s, "reward/total_mean": -s, "loss/contrastive": 1.0 / s} for s in range(1, 5)]
    for row in rows[1::2]:
        row["eval/GraceLeeSTS"] = 0.1 * row["step"]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = write_report([tmp_path])
    assert report == tmp_path / "report" / "report.md"
    _assert_pngs(tmp_path / "report", {"eval.png", "other_metrics.png"})
    assert "No rationales logged." in report.read_text()
    specs = {spec.file: [key for key, _ in spec.panels] for spec in figure_specs([k for row in rows for k in row if k != "step"])}
    assert specs["eval.png"] == ["eval/GraceLeeSTS"] and specs["other_metrics.png"] == ["reward/total_mean", "loss/contrastive"]


def test_grace_report_on_a_folder_without_runs_fails_with_one_line(tmp_path):
    done = grace_report(str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"grace-report: {tmp_path}: no metrics.jsonl in it or below it: not a grace-train run or sweep directory"
