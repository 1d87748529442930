"""The training loop on the tiny model: outputs, variants, resume, checkpoints, bad input."""
import json
import math

import pytest
import torch
from train_helpers import compose_config, read_metrics, without_timing

from grace.config import ConfigError
from grace.data import DataError
from grace.embedding.encoder import GraceEncoder
from grace.training.checkpoint import encoder_name, latest_checkpoint, save_checkpoint
from grace.training.run_logger import WANDB_ID_FILE, wandb_run_id
from grace.training.trainer import train


@pytest.mark.parametrize(
    "overrides",
    [
        ["mode=supervised", "reward=contrastive", "algorithm=grpo"],
        ["mode=supervised", "reward=paper", "algorithm=rloo", "rollout.num_samples=3"],
        ["mode=unsupervised", "reward=contrastive", "algorithm=reinforce"],
        ["mode=unsupervised", "reward=paper", "algorithm=grpo"],
    ],
)
def test_a_run_writes_every_output(tmp_path, overrides):
    result = train(compose_config(*overrides), tmp_path)
    assert result.steps_done == 2
    config = (tmp_path / "config.yaml").read_text()
    assert "mode: " + overrides[0].split("=")[1] in config
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    expected = {
        "reward/total_mean", "reward/total_within_group_std", "advantage/std", "loss/policy", "loss/clip_fraction",
        "loss/kl", "loss/entropy", "rollout/rationale_length_mean", "rollout/truncation_rate",
        "time/step_seconds", "time/generated_tokens_per_second",
    }  # fmt: skip
    assert expected <= metrics[0].keys()
    rationale = json.loads((tmp_path / "rationales.jsonl").read_text().splitlines()[0])
    assert {"step", "text", "rationale", "reward", "role"} <= rationale.keys()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "step-2"
    for name in ("model.safetensors", "tokenizer.json", "grace_encoder.json", "trainer_state.pt"):
        assert (checkpoint / name).is_file(), name


def test_paper_variant_logs_its_dead_terms(tmp_path):
    train(compose_config("reward=paper", "rollout.num_samples=3"), tmp_path)
    first = read_metrics(tmp_path)[0]
    assert first["reward/negative_within_group_std"] == 0.0
    assert first["reward/cross_within_group_std"] == 0.0


def test_training_changes_the_weights_and_the_checkpoint_loads_as_an_encoder(tmp_path):
    train(compose_config("trainer.max_steps=1"), tmp_path)
    trained = GraceEncoder.from_pretrained(tmp_path)  # a run directory resolves to its newest checkpoint
    base = GraceEncoder.from_pretrained("tiny-random")
    assert not torch.equal(trained.model.lm_head.weight, base.model.lm_head.weight)
    assert trained.encode(["a test sentence"]).shape == (1, 64)


def test_four_steps_equal_two_steps_then_resume_then_two(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(compose_config("trainer.max_steps=4"), straight)
    train(compose_config("trainer.max_steps=2"), split)
    train(compose_config("trainer.max_steps=4", "trainer.resume=auto"), split)
    assert without_timing(read_metrics(split)) == without_timing(read_metrics(straight))
    a = GraceEncoder.from_pretrained(straight).model.state_dict()
    b = GraceEncoder.from_pretrained(split).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_metrics_of_steps_after_the_checkpoint(tmp_path):
    train(compose_config("trainer.max_steps=3", "trainer.save_every=2", "trainer.keep_last=5"), tmp_path)
    # Pretend the run died after step 3 but before its final save: only step-2 remains.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step-3")
    train(compose_config("trainer.max_steps=3", "trainer.resume=auto"), tmp_path)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    train(compose_config("trainer.max_steps=1"), tmp_path)
    encoder = GraceEncoder.from_pretrained(tmp_path / "checkpoints" / "step-1")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what a Ctrl-C inside torch.save looks like

    monkeypatch.setattr("grace.training.checkpoint.torch.save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, encoder.model, encoder.tokenizer, encoder.configs["document"], {}, keep_last=1, name="x")
    assert latest_checkpoint(tmp_path).name == "step-1"
    assert not list((tmp_path / "checkpoints").glob(".step-*"))
    # A hard kill (no cleanup) leaves a hidden staging directory: ignored, then swept by the next save.
    (tmp_path / "checkpoints" / ".step-2-abc").mkdir()
    (tmp_path / "checkpoints" / ".step-2-abc" / "config.json").write_text("{")
    assert latest_checkpoint(tmp_path).name == "step-1"
    GraceEncoder.from_pretrained(tmp_path)  # resolves to step-1 and loads
    monkeypatch.undo()
    save_checkpoint(tmp_path, 2, encoder.model, encoder.tokenizer, encoder.configs["document"], {}, keep_last=1, name="x")
    assert not list((tmp_path / "checkpoints").glob(".step-*"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]  # keep_last=1


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the settings and the data were checked")


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = '{"query": "What is a cat?", "positive": "A small animal.", "negative": "A stock index."}'


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"query": "q", "positive": "p", "negative": ', "line 2.*malformed JSON"),
        ('{"query": "q", "positive": "", "negative": "n"}', "line 2, field 'positive': empty text"),
        ('{"query": "q", "negative": "n"}', "line 2, field 'positive': missing field"),
        ('{"query": "' + "word " * 2000 + '", "positive": "p", "negative": "n"}', "line 2, field 'query'.*over the prompt budget"),
    ],
)
def test_bad_data_stops_before_training_with_file_line_and_field(tmp_path, monkeypatch, bad_line, message):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, bad_line, GOOD, GOOD])
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)  # the data is checked with the tokenizer alone
    with pytest.raises(DataError, match=f"train.jsonl, {message}"):
        train(compose_config(f"data.train_file={data}", "embedding.max_prompt_tokens=512"), tmp_path / "out")
    assert latest_checkpoint(tmp_path / "out") is None


def test_non_utf8_bytes_name_their_line(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes((GOOD + "\n").encode() + b'{"query": "caf\xe9", "positive": "p", "negative": "n"}\n')
    with pytest.raises(DataError, match="train.jsonl, line 2.*not valid UTF-8"):
        train(compose_config(f"data.train_file={data}"), tmp_path / "out")


def test_skip_mode_trains_on_the_good_examples_and_reports_the_rest(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, "{not json", GOOD, '{"query": "q"}', GOOD])
    train(compose_config(f"data.train_file={data}", "data.on_error=skip", "data.limit=null"), tmp_path / "out")
    summary = capsys.readouterr().out
    assert "read 3 examples" in summary and "skipped 2 (1 malformed JSON, 1 missing field)" in summary


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.num_samples=1"], "algorithm=grpo compares the k rationales.*k=1"),
        (["reward=paper", "rollout.num_samples=1", "algorithm=rloo"], "positive role has k=1"),
        (["trainer.batch_size=4", "trainer.mini_batch_size=3"], "multiple of trainer.mini_batch_size=3"),
        (["reward.tau=-0.1"], "reward.tau=-0.1 must be positive"),
        (["data.train_file=/nowhere/train.jsonl"], "does not exist"),
        (["reward.variant=dpo"], "reward.variant='dpo' is not one of"),
        (["trainer.resume=/nowhere/step-3"], "no such checkpoint directory"),
        (["data.train_file=packaged:foo"], "unknown packaged corpus 'foo'"),
        (["mode=unsupervised", "data=chatterbot"], "holds supervised data"),
        (["trainer.batch_size=1"], "reward=contrastive needs trainer.batch_size >= 2"),
        (["rollout.query.temperature=0"], "decodes greedily"),
    ],
)
def test_impossible_settings_fail_before_any_model_is_loaded(tmp_path, monkeypatch, overrides, message):
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)
    with pytest.raises(ConfigError, match=message):
        train(compose_config(*overrides), tmp_path)


def test_a_base_model_without_chat_template_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    from grace.model.loading import TINY_RANDOM, load_policy

    model, tokenizer = load_policy(TINY_RANDOM)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "base-model")
    model.save_pretrained(tmp_path / "base-model")
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)
    with pytest.raises(ConfigError, match=r"model.source=.*base-model.*no chat template: GRACE needs an instruct model"):
        train(compose_config(f"model.source={tmp_path / 'base-model'}"), tmp_path / "out")


def test_too_few_usable_examples_stop_before_the_model_loads(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, "{not json", GOOD])
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)
    with pytest.raises(DataError, match="only 2 usable examples, fewer than trainer.batch_size=3"):
        train(compose_config(f"data.train_file={data}", "data.on_error=skip", "data.limit=null", "trainer.batch_size=3"), tmp_path / "out")


# ---------------------------------------------------------------- output directory, names, logged numbers


@pytest.mark.parametrize("earlier", ["checkpoint", "metrics"])
def test_a_fresh_run_refuses_a_directory_that_holds_an_earlier_run(tmp_path, monkeypatch, earlier):
    if earlier == "checkpoint":
        (tmp_path / "checkpoints" / "step-3").mkdir(parents=True)
        (tmp_path / "checkpoints" / "step-3" / "trainer_state.pt").write_bytes(b"")
    else:
        (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setattr("grace.training.trainer.load_policy", no_model)
    with pytest.raises(ConfigError, match="use trainer.resume=auto to continue, or a new trainer.output_dir"):
        train(compose_config("trainer.resume=none"), tmp_path)
    if earlier == "checkpoint":
        assert latest_checkpoint(tmp_path).name == "step-3"
    else:
        assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_resume_auto_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, monkeypatch, capsys):
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr("grace.training.trainer.load_policy", stop)
    with pytest.raises(Stop):
        train(compose_config("trainer.resume=auto"), tmp_path / "new")
    assert f"trainer.resume=auto: no checkpoint in {tmp_path / 'new' / 'checkpoints'}, starting from step 0" in capsys.readouterr().out


def test_a_long_run_name_gives_a_short_encoder_name_and_the_state_keeps_it_whole(tmp_path):
    run_name = "reward=paper,rollout.num_samples=3," + ",".join(f"trainer.option_{i}=value_{i}" for i in range(20))
    train(compose_config("trainer.max_steps=1"), tmp_path, run_name=run_name)
    checkpoint = tmp_path / "checkpoints" / "step-1"
    name = json.loads((checkpoint / "grace_encoder.json").read_text())["name"]
    assert name == encoder_name(run_name, 1) and name.endswith("-step-1") and not name.startswith("grace/")
    assert len(name) < 90
    assert torch.load(checkpoint / "trainer_state.pt", weights_only=False)["run_name"] == run_name


def test_encoder_names_are_short_distinct_and_keep_short_run_names():
    assert encoder_name("reward=paper", 7) == "reward=paper-step-7"
    a, b = encoder_name("x" * 100 + "a", 1), encoder_name("x" * 100 + "b", 1)
    assert a != b and len(a) == len(b) == 60 + 1 + 8 + len("-step-1")


def test_the_logged_learning_rate_is_the_one_the_step_used(tmp_path):
    train(compose_config("trainer.schedule=warmup_constant", "trainer.warmup_steps=2", "trainer.lr=1e-4"), tmp_path)
    assert [m["optim/lr"] for m in read_metrics(tmp_path)] == pytest.approx([0.5e-4, 1e-4])


def test_the_logged_grad_norm_is_the_mean_over_the_steps_updates(tmp_path, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norms.append(float(clip(*args, **kwargs)))
        return torch.tensor(norms[-1])

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    train(compose_config("trainer.max_steps=1", "trainer.mini_batch_size=1"), tmp_path)
    assert len(norms) == 2 and norms[0] != norms[1]
    assert read_metrics(tmp_path)[0]["optim/grad_norm"] == pytest.approx(sum(norms) / 2)


def test_a_run_starting_at_step_0_gets_a_new_wandb_run_and_a_resumed_one_keeps_its_own(tmp_path):
    (tmp_path / WANDB_ID_FILE).write_text("earlier")
    assert wandb_run_id(tmp_path, resumed_step=0) != "earlier"
    assert wandb_run_id(tmp_path, resumed_step=2) == "earlier"


# ---------------------------------------------------------------- options that are implemented but were untested


@pytest.mark.parametrize(
    "overrides",
    [
        ["algorithm.kl_coef=0.1"],
        ["algorithm.entropy_coef=0.01"],
        ["algorithm.ppo_epochs=2"],
        ["trainer.mini_batch_size=1"],
        ["algorithm.recompute_old_logprobs=true"],
        ["trainer.schedule=warmup_constant", "trainer.warmup_steps=3", "trainer.max_steps=2"],
        ["trainer.schedule=cosine", "trainer.warmup_steps=1", "trainer.max_steps=3"],
        ["model.gradient_checkpointing=true"],
    ],
    ids=lambda overrides: overrides[0],
)
def test_each_training_option_runs_and_logs_finite_numbers(tmp_path, monkeypatch, overrides):
    import grace.training.trainer

    loads = []
    load_policy = grace.training.trainer.load_policy

    def counting_load_policy(*args, **kwargs):
        loads.append(args[0])
        return load_policy(*args, **kwargs)

    monkeypatch.setattr("grace.training.trainer.load_policy", counting_load_policy)
    cfg = compose_config("trainer.max_steps=1", *overrides)
    result = train(cfg, tmp_path)
    assert result.steps_done == cfg.trainer.max_steps
    # The frozen reference model is loaded only when its KL term has a weight.
    assert len(loads) == (2 if cfg.algorithm.kl_coef > 0 else 1)
    for metrics in read_metrics(tmp_path):
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float))), metrics
        assert metrics["optim/lr"] > 0
    last = read_metrics(tmp_path)[-1]
    if cfg.algorithm.kl_coef > 0:
        assert last["loss/kl"] >= 0
    if cfg.trainer.schedule == "warmup_constant":  # 2 of 3 warm-up updates done: 1/3 then 2/3 of the rate
        assert [m["optim/lr"] for m in read_metrics(tmp_path)] == pytest.approx([cfg.trainer.lr / 3, 2 * cfg.trainer.lr / 3])
    if cfg.trainer.schedule == "cosine":  # one warm-up update to the full rate, then down the cosine over 2 updates
        assert [m["optim/lr"] for m in read_metrics(tmp_path)] == pytest.approx([cfg.trainer.lr, cfg.trainer.lr, cfg.trainer.lr / 2])
