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


def _row(method: str, mean: float, tokens: float | None, speed: float | None) -> dict:
    return {"label": method, "method": method, "scores": {"mean": mean}, "rationale_tokens_per_text": tokens, "texts_per_second": speed}


def test_rows_are_grouped_per_method_and_cached_rows_keep_only_their_score(tmp_path) -> None:
    snapshot = {"rows": [
        _row("base (no rationale)", 0.40, 0.0, 20.0),
        _row("GRACE", 0.50, 30.0, 2.0), _row("GRACE", 0.54, 32.0, 4.0),
        _row("GRACE", 0.52, None, None),  # every text from a cache: a score, no cost
    ]}  # fmt: skip
    (tmp_path / "quality_step18.json").write_text(json.dumps(snapshot))
    (tmp_path / "tokens64.json").write_text(json.dumps({"rows": [_row("GRACE", 0.6, 60.0, 1.0)]}))
    costs = _costs()
    methods = costs.read_methods([tmp_path / "quality_step18.json", tmp_path / "tokens64.json"])
    assert [m.name for m in methods] == ["base (no rationale)", "GRACE", "GRACE [tokens64]"]  # another setting stays apart
    grace = methods[1]
    assert grace.scores == pytest.approx([50.0, 54.0, 52.0]) and grace.tokens == [30.0, 32.0] and grace.speeds == [2.0, 4.0]
    table = costs.to_markdown(methods).splitlines()
    assert table[2] == "| base (no rationale) | 1 | 0.0 | 20.0 | 40.00 |"
    assert table[3] == "| GRACE | 3 | 31.0 ± 1.4 | 3.0 ± 1.4 | 52.00 ± 2.00 |"
    costs.draw(methods, tmp_path / "cost.png")
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_a_snapshot_without_cost_records_is_refused_by_name(tmp_path) -> None:
    old = tmp_path / "quality_old.json"
    old.write_text(json.dumps({"rows": [{"label": "x", "method": "x", "scores": {"mean": 0.5}}]}))
    with pytest.raises(SystemExit, match="quality_old.json: rows without rationale_tokens_per_text"):
        _costs().read_methods([old])
