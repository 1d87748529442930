"""Mean ± spread over seeds, on hand-made comparison tables."""
import pytest

from grace.evaluation.report import ComparisonTable, EncoderResult
from grace.evaluation.seeds import summarise, to_markdown


def row(label, a, b, rationale=False):
    return EncoderResult(label=label, model_name="m", revision="r", rationale=rationale, scores={"GraceA": a, "GraceB": b})


TABLE = ComparisonTable(
    tasks=["GraceA", "GraceB"],
    main_scores={"GraceA": "spearman", "GraceB": "accuracy"},
    rows=[row("base", 0.5, 0.5), row("X seed 0", 0.1, 0.4, True), row("X seed 1", 0.3, 0.4, True), row("X seed 2", 0.2, 0.7, True)],
)


def test_seeds_of_a_method_become_one_row_with_the_sample_std_and_others_stay_single():
    base, x = summarise(TABLE, {"X seed 0": "X", "X seed 1": "X", "X seed 2": "X"})
    assert base.method == "base" and base.runs == ["base"] and base.spread == {"GraceA": 0.0, "GraceB": 0.0, "mean": 0.0}
    assert x.runs == ["X seed 0", "X seed 1", "X seed 2"] and x.rationale
    assert x.mean["GraceA"] == pytest.approx(0.2) and x.spread["GraceA"] == pytest.approx(0.1)  # sqrt(0.02 / 2)
    assert x.mean["GraceB"] == pytest.approx(0.5) and x.spread["GraceB"] == pytest.approx(0.03**0.5)  # deviations -0.1, -0.1, 0.2
    # The suite mean's spread is over runs' means (0.25, 0.35, 0.45), not over tasks.
    assert x.mean["mean"] == pytest.approx(0.35) and x.spread["mean"] == pytest.approx(0.1)
    markdown = to_markdown(TABLE, [base, x])
    assert "| X | 3 | yes | 20.00 ± 10.00 | 50.00 ± 17.32 | 35.00 ± 10.00 |" in markdown
    assert "| base | 1 | no | 50.00 | 50.00 | 50.00 |" in markdown


def test_a_run_that_was_not_evaluated_is_named():
    with pytest.raises(ValueError, match=r"no evaluated row for \['X seed 9'\]"):
        summarise(TABLE, {"X seed 9": "X"})
