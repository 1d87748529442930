"""The held-out set: taken out of the training data with every example sharing its texts, scored as by hand,
logged every trainer.eval_every steps (and before the first), exactly resumable, from a given source too."""
import pytest
import torch
import torch.nn.functional as F
from train_helpers import assert_resume_is_exact, compose_config, read_metrics

from grace.data import Sentence, Triplet
from grace.training.heldout import HeldOutSet, halves, halves_accuracy, heldout_from_config, split_heldout, triplet_scores
from grace.training.trainer import train

TRIPLETS = [Triplet(f"q{i}", f"p{i}", f"p{(i + 1) % 8}") for i in range(8)]  # each negative is the next one's positive


def test_held_out_examples_and_every_training_example_sharing_their_texts_are_taken_out():
    train_set, heldout, dropped = split_heldout(TRIPLETS, 2, seed=0)
    assert len(heldout) == 2 and split_heldout(TRIPLETS, 2, seed=0)[1] == heldout  # seeded
    held_texts = {t for e in heldout for t in (e.query, e.positive, e.negative)}
    assert all(not held_texts & {e.query, e.positive, e.negative} for e in train_set)
    assert len(train_set) + len(heldout) + dropped == len(TRIPLETS) and dropped >= 1  # a neighbour shares a text
    assert train_set == [e for e in TRIPLETS if e in train_set]  # training order kept
    assert split_heldout(TRIPLETS, 2, seed=1)[1] != heldout


def test_no_held_out_set_without_evaluation_and_a_given_source_leaves_the_training_data_whole():
    assert heldout_from_config(compose_config(), TRIPLETS, read=None) == (TRIPLETS, None)
    pool = [Triplet(f"x{i}", "y", "z") for i in range(10)]
    cfg = compose_config("trainer.eval_every=2", "trainer.heldout.source=packaged:chatterbot", "trainer.heldout.split=eval", "trainer.heldout.size=4")
    examples, heldout = heldout_from_config(cfg, TRIPLETS, read=lambda source, split: pool if (source, split) == ("packaged:chatterbot", "eval") else [])
    assert examples == TRIPLETS and len(heldout.examples) == 4 and set(heldout.examples) <= set(pool)
    assert heldout.primary == "eval/triplet_accuracy" and HeldOutSet([Sentence("a b c d")], "").primary == "eval/halves_accuracy"


def test_triplet_accuracy_margin_and_halves_accuracy_by_hand():
    unit = lambda *rows: F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)  # noqa: E731
    q, p, n = unit([1, 0], [0, 1]), unit([1, 0.1], [1, 0]), unit([0, 1], [0, 1])
    scores = triplet_scores(q, p, n)  # the first query is closer to its positive, the second to its negative
    assert scores["eval/triplet_accuracy"] == 0.5
    margin = ((q * p).sum(-1) - (q * n).sum(-1)).mean()
    assert scores["eval/triplet_margin"] == pytest.approx(float(margin))
    first, second = unit([1, 0], [0, 1], [1, 1]), unit([1, 0.1], [1, 0.2], [1, 1])
    assert halves_accuracy(first, second)["eval/halves_accuracy"] == pytest.approx(2 / 3)  # the second finds the first's half
    assert halves("the river floods every spring") == ("the river", "floods every spring") and halves("too short") is None


def test_the_held_out_scores_are_logged_before_training_and_every_eval_every_steps_and_resume_exactly(tmp_path):
    rows = assert_resume_is_exact(tmp_path, "trainer.eval_every=2", "trainer.heldout.size=3")
    evaluated = [row for row in rows if "eval/triplet_accuracy" in row]
    assert [row["step"] for row in evaluated] == [0, 2, 4] and [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    for row in evaluated:
        assert 0 <= row["eval/triplet_accuracy"] <= 1 and -1 <= row["eval/mean_cos"] <= 1
        assert {"eval/triplet_margin", "eval/rationale_words_mean", "eval/truncation_rate", "eval/repetition_rate", "time/eval_seconds"} <= row.keys()


def test_a_run_with_evaluation_trains_exactly_as_one_without(tmp_path):
    """The evaluation leaves the random state and the weights alone: with a given held-out source (the
    training data stays whole) the training numbers match a run without evaluation."""
    source = ["trainer.heldout.source=packaged:chatterbot", "trainer.heldout.split=eval", "trainer.heldout.size=3"]
    train(compose_config("trainer.eval_every=1", *source), tmp_path / "with")
    train(compose_config(), tmp_path / "without")
    keep = lambda row: {k: v for k, v in row.items() if not k.startswith(("eval/", "time/", "guard/reward_vs"))}  # noqa: E731
    assert [keep(r) for r in read_metrics(tmp_path / "with") if r["step"] > 0] == [keep(r) for r in read_metrics(tmp_path / "without")]


def test_unsupervised_runs_score_halves_accuracy(tmp_path):
    train(compose_config("mode=unsupervised", "trainer.eval_every=1", "trainer.heldout.size=4", "trainer.max_steps=1"), tmp_path)
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [0, 1] and all(0 <= row["eval/halves_accuracy"] <= 1 for row in rows)


def test_held_out_scores_and_guard_flags_reach_the_wandb_run(tmp_path):
    from wandb_offline import logged_keys, run_file

    train(compose_config("logger=wandb", "logger.mode=offline", "trainer.eval_every=1", "trainer.heldout.size=3", "trainer.max_steps=1"), tmp_path)
    keys = logged_keys(run_file(tmp_path))
    assert {"eval/triplet_accuracy", "eval/mean_cos", "guard/repetition", "reward/grace_mean", "rollout/embedding_mean_cos"} <= keys


def test_the_held_out_set_is_embedded_with_the_runs_generation_options(tmp_path, monkeypatch):
    """How rationales are computed (grace.generation.engine) is the run's choice for its evaluation as for its rollouts."""
    import grace.training.heldout
    from grace.generation.options import GenerationOptions

    seen, real_embed = [], grace.training.heldout.embed
    monkeypatch.setattr(grace.training.heldout, "embed", lambda *args, **kwargs: seen.append(kwargs["options"]) or real_embed(*args, **kwargs))
    train(compose_config("trainer.eval_every=1", "trainer.heldout.size=3", "trainer.max_steps=1", "generation.continuous=false"), tmp_path)
    assert len(seen) == 2 and all(options == GenerationOptions(continuous=False) for options in seen)  # steps 0 and 1
