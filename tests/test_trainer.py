"""The training loop on the tiny model: outputs, variants, resume, checkpoints, bad input."""
import json

import pytest
import torch

from grace.checkpoint import latest_checkpoint, save_checkpoint
from grace.config import ConfigError
from grace.data import DataError
from grace.encoder import GraceEncoder
from grace.trainer import train

from train_helpers import compose_config, read_metrics, without_timing


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

    monkeypatch.setattr("grace.checkpoint.torch.save", killed)
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
def test_bad_data_stops_before_training_with_file_line_and_field(tmp_path, bad_line, message):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD, bad_line, GOOD, GOOD])
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
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was checked")

    monkeypatch.setattr("grace.trainer.load_policy", no_model)
    with pytest.raises(ConfigError, match=message):
        train(compose_config(*overrides), tmp_path)
