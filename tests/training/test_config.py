"""Start-up validation: every shipped config is valid, every impossible setting is named with what to change.

``validate`` runs before any model or data is loaded, so these tests compose configs and validate them
without touching a model (the trainer-level test in test_trainer.py checks that ordering).
"""
from pathlib import Path

import pytest
from train_helpers import compose_config

from grace.cli.train import CONF_DIR
from grace.config import ConfigError
from grace.training.validation import validate


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{group}={name}" for group in ("model", "mode", "reward", "algorithm", "logger", "experiment") for name in group_options(group)],
)
def test_every_shipped_config_composes_and_validates(override):
    validate(compose_config(override))


@pytest.mark.parametrize("name", group_options("objective"))
def test_every_shipped_objective_validates_in_its_mode(name, tmp_path):
    data = []
    if name == "sft":  # it reads demonstrations, which no packaged corpus holds
        (tmp_path / "demos.jsonl").write_text('{"text": "a cat", "rationale": "a small animal"}\n')
        data = [f"data.train_file={tmp_path / 'demos.jsonl'}"]
    validate(compose_config(f"objective={name}", "mode=unsupervised" if name == "simcse" else "mode=supervised", *data))


@pytest.mark.parametrize(
    "overrides, message",
    [
        # data: the source must exist, be known and hold the mode's kind of examples
        (["data.train_file=packaged:foo"], "unknown packaged corpus 'foo': use one of packaged:wiki, packaged:chatterbot, packaged:lee_background"),
        (["mode=unsupervised", "data.train_file=packaged:chatterbot"], "holds supervised data.*use mode='supervised', or unsupervised data such as packaged:wiki"),
        (["mode=supervised", "data=wiki"], "packaged:wiki.*holds unsupervised data.*use mode='unsupervised', or supervised data such as packaged:chatterbot"),
        (["mode=unsupervised", "data.split=eval"], "packaged:wiki has no split 'eval'; it has train"),
        # rollout
        (["rollout.batch_size=0"], "rollout.batch_size=0 must be at least 1"),
        (["rollout.max_new_tokens=0"], r"rollout.max_new_tokens=0: the query role is trained, so its rationale needs at least 1 token"),
        (["rollout.positive.max_new_tokens=0"], "rollout.positive.max_new_tokens=0: the positive role is trained"),
        (["reward=paper", "rollout.query.max_new_tokens=-1"], r"rollout.query.max_new_tokens=-1: it must be >= 0"),
        (["rollout.query.temperature=0"], "rollout.query.temperature=0 decodes greedily, so the k=2 rationales.*zero advantage.*temperature > 0"),
        (["algorithm=rloo", "rollout.negative.temperature=0", "rollout.num_samples=3"], "rollout.negative.temperature=0.*k=3.*algorithm=rloo"),
        # model and data size
        (["model.source=/nowhere/model"], "model.source='/nowhere/model': no such model directory"),
        (["data.limit=1"], "data.limit=1 is below trainer.batch_size=2"),
        # reward and schedule
        (["trainer.batch_size=1"], "reward=contrastive needs trainer.batch_size >= 2.*InfoNCE"),
        (["trainer.warmup_steps=3"], "trainer.warmup_steps=3 has no effect with trainer.schedule=constant: use trainer.schedule=warmup_constant"),
        (["trainer.schedule=cosine", "trainer.warmup_steps=-1"], "trainer.warmup_steps=-1 must be >= 0"),
        # objectives: each in its mode, with the settings it uses
        (["objective.name=dpo"], "objective.name='dpo' is not one of"),
        (["objective=simcse"], "objective=simcse trains on unsupervised data: set mode=unsupervised, or use objective=contrastive"),
        (["objective=contrastive", "mode=unsupervised"], "objective=contrastive trains on supervised data: set mode=supervised, or use objective=simcse"),
        (["objective=contrastive", "objective.temperature=0"], "objective.temperature=0.0 must be positive"),
        (["objective=simcse", "mode=unsupervised", "objective.dropout=0"], "both views of a sentence would be the same embedding.*objective.dropout > 0"),
        (["objective=simcse", "mode=unsupervised", "objective.dropout=1"], r"objective.dropout=1.0 must be in \[0, 1\)"),
        (["objective=simcse", "mode=unsupervised", "trainer.mini_batch_size=1"], "an update holds 1 example: raise trainer.batch_size"),
        (["objective=contrastive", "objective.hard_negatives=false", "trainer.batch_size=1"], "contrasts each example with the others"),
        (["objective=contrastive", "embedding.pooling=rationale"], "objective=contrastive writes no rationale"),
        (["objective=contrastive", "algorithm.kl_coef=0.1"], "algorithm.kl_coef=0.1 belongs to objective=grace's policy update.*remove it"),
        (["objective=contrastive", "algorithm.embedding_loss_coef=0.5"], "algorithm.embedding_loss_coef=0.5 belongs to objective=grace"),
        (["objective.dropout=0.1"], "objective.dropout=0.1 with objective=grace.*PPO ratios would not start at 1"),
        (["algorithm.embedding_loss_coef=-1"], "algorithm.embedding_loss_coef=-1.0 must be >= 0"),
        (["algorithm.embedding_loss_temperature=0"], "algorithm.embedding_loss_temperature=0.0 must be positive"),
    ],
)
def test_impossible_settings_name_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_a_txt_file_cannot_hold_supervised_triplets(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one text\nanother text\n")
    with pytest.raises(ConfigError, match=r"data.train_file=.*corpus.txt.*only suits mode='unsupervised'.*query, positive, negative"):
        validate(compose_config(f"data.train_file={corpus}"))
    validate(compose_config(f"data.train_file={corpus}", "mode=unsupervised"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["reward=paper", "rollout.query.max_new_tokens=0"],  # an untrained role may go without a rationale
        ["reward=paper", "rollout.query.temperature=0", "rollout.query.num_samples=2"],  # untrained: no advantage needed
        ["algorithm=reinforce", "rollout.positive.temperature=0"],  # the batch baseline still differs across texts
        ["mode=unsupervised", "rollout.negative.max_new_tokens=0"],  # no negatives are sampled in this mode
        ["trainer.schedule=cosine", "trainer.warmup_steps=3"],
        ["mode=unsupervised", "data=lee_background"],
        ["objective=contrastive", "embedding.pooling=input"],  # no rationale to train: the plain mean over the text is fine
        ["objective=contrastive", "trainer.batch_size=1"],  # the query still picks its positive over its hard negative
        ["objective=contrastive", "rollout.num_samples=1"],  # rollout settings are not used: GRACE's checks do not apply
        ["algorithm.embedding_loss_coef=0.5", "reward=paper"],
    ],
)
def test_settings_that_only_look_odd_are_accepted(overrides):
    validate(compose_config(*overrides))


def test_generation_options_are_typed_and_checked():
    cfg = compose_config("generation.compile=true", "generation.continuous=false")
    assert (cfg.generation.compile, cfg.generation.continuous, cfg.generation.shared_prefix) == (True, False, True)
    with pytest.raises(Exception, match="compiled"):
        compose_config("generation.compiled=true")
    with pytest.raises(Exception, match="generation.compile"):
        compose_config("generation.compile=sometimes")


def test_the_paper_reward_on_one_example_per_step_warns_that_its_cross_term_is_zero():
    with pytest.warns(UserWarning, match="cross-group term.*always 0"):
        validate(compose_config("reward=paper", "trainer.batch_size=1"))
