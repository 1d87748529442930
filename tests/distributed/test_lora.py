"""LoRA through peft on the tiny model: only the adapter trains, checkpoints hold merged weights beside the
adapter, KL's reference is the base with the adapter off, resumes are exact."""
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from train_helpers import compose_config, read_metrics, without_timing

import grace.training.trainer
from grace.config import ConfigError
from grace.distributed.parallel import check_world_size
from grace.distributed.ranks import World
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import EmbeddingConfig, embed
from grace.model.loading import TINY_RANDOM, load_policy
from grace.training.trainer import train
from grace.training.validation import validate

LORA = ["model.lora.r=4", "model.lora.alpha=8"]
TEXTS = ["How do plants make food?", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("lora")
    train(compose_config(*LORA), output)
    return output / "checkpoints" / "step-2"


def test_only_the_adapter_trains_and_the_checkpoint_holds_merged_weights_beside_it(lora_run):
    base = load_policy(TINY_RANDOM)[0].state_dict()
    merged = load_file(lora_run / "model.safetensors")
    adapted = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear, not the head
    assert set(merged) <= set(base)  # a plain model: no adapter weights in it
    for name, tensor in merged.items():
        if any(f".{layer}." in name for layer in adapted):
            assert not torch.equal(tensor, base[name]), f"{name}: the merged adapter should have changed it"
        else:
            assert torch.equal(tensor, base[name]), f"{name} is not adapted and must not change"
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in name or "lora_B" in name for name in adapter)
    optimizer = torch.load(lora_run / "trainer_state.pt", weights_only=False)["optimizer"]
    assert optimizer["state"] and all("lora_" in name for name in optimizer["state"])


def test_the_merged_checkpoint_embeds_like_the_base_model_with_its_adapter(lora_run):
    encoder = GraceEncoder.from_pretrained(lora_run)
    base, tokenizer = load_policy(TINY_RANDOM)
    with_adapter = PeftModel.from_pretrained(base, lora_run / "adapter").base_model.model.eval()
    for config in (encoder.configs["document"], EmbeddingConfig(rationale=False)):
        expected = embed(with_adapter, tokenizer, TEXTS, config).embeddings
        assert torch.allclose(torch.as_tensor(encoder.with_settings(config).encode(TEXTS)), expected, atol=1e-5)


def test_kl_with_lora_loads_no_second_model_and_compares_with_the_base(tmp_path, monkeypatch):
    loads = []

    def counted(*args, **kwargs):
        loads.append(args[0])
        return load_policy(*args, **kwargs)

    monkeypatch.setattr(grace.training.trainer, "load_policy", counted)
    train(compose_config(*LORA, "algorithm.kl_coef=0.1"), tmp_path / "lora")
    assert len(loads) == 1
    # The reference is the base: KL is 0 before the first update (B = 0) and positive once the adapter moved.
    kl = [row["loss/kl"] for row in read_metrics(tmp_path / "lora")]
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 0
    loads.clear()
    train(compose_config("algorithm.kl_coef=0.1"), tmp_path / "full")
    assert len(loads) == 2  # without LoRA, the reference is a second copy


def test_four_steps_equal_two_steps_then_resume_then_two(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(compose_config(*LORA, "trainer.max_steps=4"), straight)
    train(compose_config(*LORA, "trainer.max_steps=2"), split)
    train(compose_config(*LORA, "trainer.max_steps=4", "trainer.resume=auto"), split)
    assert without_timing(read_metrics(split)) == without_timing(read_metrics(straight))
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(straight / "checkpoints" / "step-4" / name), load_file(split / "checkpoints" / "step-4" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_gradient_checkpointing_and_bf16_train_the_adapter(tmp_path):
    train(compose_config(*LORA, "model.gradient_checkpointing=true"), tmp_path / "checkpointed")
    train(compose_config(*LORA), tmp_path / "plain")
    checkpointed, plain = read_metrics(tmp_path / "checkpointed"), read_metrics(tmp_path / "plain")
    assert checkpointed[1]["optim/grad_norm"] == pytest.approx(plain[1]["optim/grad_norm"], rel=1e-5)
    train(compose_config(*LORA, "trainer.precision=bf16"), tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(row["optim/grad_norm"])) and row["optim/grad_norm"] > 0 for row in read_metrics(tmp_path / "bf16"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.lora.r=-1"], "model.lora.r=-1"),
        ([*LORA, "model.lora.alpha=0"], "model.lora.alpha"),
        ([*LORA, "model.lora.dropout=0.1"], "PPO ratios"),
        ([*LORA, "model.lora.target_modules=[]"], "target_modules is empty"),
    ],
)
def test_impossible_lora_settings_fail_at_start_up(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_a_layer_name_that_matches_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="matched no layer|Target modules"):
        train(compose_config(*LORA, "model.lora.target_modules=[no_such_proj]"), tmp_path)


def test_a_batch_that_does_not_split_over_the_ranks_fails_at_start_up():
    cfg = compose_config("trainer.batch_size=6", "trainer.mini_batch_size=3")
    check_world_size(cfg, World(rank=0, size=3))
    with pytest.raises(ConfigError, match="trainer.batch_size=6 does not split over 4 processes"):
        check_world_size(cfg, World(rank=0, size=4))
    with pytest.raises(ConfigError, match="trainer.mini_batch_size=3 does not split over 2 processes"):
        check_world_size(cfg, World(rank=0, size=2))
