import pytest
import torch

from grace.model.loading import TINY_RANDOM, count_parameters, load_policy, load_tokenizer, packaged_smollm2_dir
from grace.model.sources import PACKAGED_SMOLLM2


def test_tiny_random_is_seeded_and_uses_the_packaged_tokenizer():
    a, tokenizer = load_policy(TINY_RANDOM, seed=1)
    b, _ = load_policy(TINY_RANDOM, seed=1)
    c, _ = load_policy(TINY_RANDOM, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert a.config.vocab_size == len(tokenizer)


def test_dtype_option():
    model, _ = load_policy(TINY_RANDOM, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_policy(TINY_RANDOM, dtype="float8")


@pytest.mark.parametrize("path", ["/does/not/exist", "./missing-model", "a/b/c"])
def test_missing_local_path_is_a_clear_error(path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(path)


def test_local_directory_loads_with_plain_transformers(tmp_path):
    model, tokenizer = load_policy(TINY_RANDOM)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = load_policy(str(tmp_path))
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    alone = load_tokenizer(str(tmp_path))  # what the trainer checks the data with, before the weights load
    assert alone.chat_template == tokenizer.chat_template and alone.get_vocab() == tokenizer.get_vocab()


def test_load_tokenizer_handles_every_source_like_load_policy(tmp_path, monkeypatch):
    assert load_tokenizer(TINY_RANDOM).get_vocab() == load_policy(TINY_RANDOM)[1].get_vocab()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("./missing-model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no local directory 'outputs/run'"):
        load_tokenizer("outputs/run")


@pytest.mark.slow
def test_packaged_smollm2_converts_once_and_loads_as_plain_safetensors():
    directory = packaged_smollm2_dir()
    assert (directory / "model.safetensors").is_file()
    model, tokenizer = load_policy(PACKAGED_SMOLLM2)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert 134_000_000 < count_parameters(model) < 135_000_000
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.parametrize("path", ["outputs/run", "models/mine", "my-model"])
def test_missing_relative_path_that_looks_like_a_hub_id_says_both(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing by that name here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as raised:
        load_policy(path)
    message = str(raised.value)
    assert message.startswith(f"no local directory {path!r}, and it could not be loaded as a hub id (offline? ")
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message  # the hub's answer follows, on one line
    assert isinstance(raised.value.__cause__, OSError)  # the original is kept for tracebacks
