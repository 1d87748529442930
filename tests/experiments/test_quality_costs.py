"""experiments/quality/costs.py groups a quality.json snapshot's rows into score against cost per method."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "quality" / "costs.py"


def _costs():
    spec = importlib.util.spec_from_file_location("quality_costs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row(method: str, mean: float, tokens: float | None, speed: float | None, seed: int | None = None, step: int = 18) -> dict:
    trained = {} if seed is None else {"seed": seed, "step": step}
    label = method if seed is None else f"{method} seed {seed}"
    return {"label": label, "method": method, **trained, "scores": {"mean": mean}, "rationale_tokens_per_text": tokens, "texts_per_second": speed}


def test_rows_are_grouped_per_method_and_step_and_cached_rows_keep_only_their_score(tmp_path) -> None:
    at_32 = "greedy rationales of at most 32 tokens"
    snapshot = {"setting": at_32, "rows": [
        _row("base (no rationale)", 0.40, 0.0, 20.0),
        _row("GRACE", 0.50, 30.0, 2.0, seed=0), _row("GRACE", 0.54, 32.0, 4.0, seed=1),
        _row("GRACE", 0.52, None, None, seed=2),  # every text from a cache: a score, no cost
    ]}  # fmt: skip
    (tmp_path / "quality_step18.json").write_text(json.dumps(snapshot))
    later = {"setting": at_32, "rows": [_row("base (no rationale)", 0.40, None, None), _row("GRACE", 0.56, 31.0, 3.0, seed=0, step=36)]}
    (tmp_path / "quality_step36.json").write_text(json.dumps(later))  # the base row again, from mteb's cache
    other_runs = {"setting": at_32, "rows": [_row("base (no rationale)", 0.40, None, None), _row("SFT", 0.45, 22.0, 5.0, seed=0, step=12)]}
    (tmp_path / "two_stage.json").write_text(json.dumps(other_runs))  # other runs, the same evaluation setting
    at_64 = {"setting": "greedy rationales of at most 64 tokens", "rows": [_row("GRACE", 0.6, 60.0, 1.0, seed=0)]}
    (tmp_path / "tokens64.json").write_text(json.dumps(at_64))
    costs = _costs()
    methods = costs.read_methods([tmp_path / f"{name}.json" for name in ("quality_step18", "quality_step36", "two_stage", "tokens64")])
    # Each step, and another setting, stays apart; the base row repeated in the same setting counts once.
    names = ["base (no rationale)", "GRACE, 18 steps", "GRACE, 36 steps", "SFT, 12 steps", "GRACE, 18 steps [tokens64]"]
    assert [m.name for m in methods] == names
    grace = methods[1]
    assert grace.scores == pytest.approx([50.0, 54.0, 52.0]) and grace.tokens == [30.0, 32.0] and grace.speeds == [2.0, 4.0]
    table = costs.to_markdown(methods).splitlines()
    assert table[2] == "| base (no rationale) | 1 | 0.0 | 20.0 | 40.00 |"
    assert table[3] == "| GRACE, 18 steps | 3 | 31.0 ± 1.4 | 3.0 ± 1.4 | 52.00 ± 2.00 |"
    costs.draw(methods, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_a_snapshot_without_cost_records_is_refused_by_name(tmp_path) -> None:
    old = tmp_path / "quality_old.json"
    old.write_text(json.dumps({"setting": "32 tokens", "rows": [{"label": "x", "method": "x", "scores": {"mean": 0.5}}]}))
    with pytest.raises(SystemExit, match="quality_old.json: rows without rationale_tokens_per_text"):
        _costs().read_methods([old])
