"""grace-report --explain-pairs: fixed held-out pairs explained at a run's first and last checkpoint (tiny model)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from grace.cli.report import main as report_main
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.model.loading import TINY_RANDOM, load_policy
from grace.runs.explained_pairs import before_and_after, probe_pairs
from grace.training.checkpoint import save_checkpoint

SHORT = EmbeddingConfig(decoding=Decoding(max_new_tokens=3), max_prompt_tokens=128)


@pytest.fixture
def run_dir(tmp_path):
    """A run with checkpoints at steps 1 and 2 (the second with other weights) and a logged step."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total_mean": 0.5}) + "\n")
    model, tokenizer = load_policy(TINY_RANDOM)
    for step in (1, 2):
        if step == 2:
            with torch.no_grad():
                weight = model.get_decoder().layers[0].mlp.down_proj.weight  # different weights, different similarities
                weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std() * 3)
        save_checkpoint(run, step, model, tokenizer, SHORT, {"step": step}, keep_last=5, name=f"run-step-{step}")
    return run


def test_first_and_last_checkpoint_and_the_start_model(run_dir, tmp_path):
    assert [label for label, _ in before_and_after(run_dir)] == ["step-1", "step-2"]
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-2").rename(single / "checkpoints" / "step-2")
    (single / "start_model.json").write_text(json.dumps({"source": TINY_RANDOM}))
    assert before_and_after(single) == [(f"start ({TINY_RANDOM})", TINY_RANDOM), ("step-2", str(single / "checkpoints" / "step-2"))]
    assert before_and_after(tmp_path / "nothing") == []


def test_probe_pairs_are_fixed_questions_and_answers():
    pairs = probe_pairs(2)
    assert len(pairs) == 2 and pairs == probe_pairs(2) and all(q and a for q, a in pairs)


def test_report_gains_the_explained_pairs_section(run_dir, capsys):
    assert report_main([str(run_dir), "--explain-pairs", "2"]) is None
    text = (run_dir / "report" / "report.md").read_text()
    assert "## Explained held-out pairs" in text and text.count("**Pair ") == 2
    rows = [line for line in text.splitlines() if line.startswith(("| step-1 |", "| step-2 |"))]
    assert len(rows) == 4
    cosines = [float(row.split("|")[2]) for row in rows]
    assert cosines[0] != cosines[1]  # the two checkpoints explain differently
    assert all(re.search(r"\| -?\d+\.\d% \|", row) for row in rows)
    page = (run_dir / "report" / "explained_pairs.html").read_text()
    assert page.count('<section class="pair">') == 4 and "pair 2 · step-2" in page
