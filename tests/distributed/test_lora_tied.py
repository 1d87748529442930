"""LoRA on weights tied to the embeddings (SmolLM2, Qwen2.5-1.5B, Llama-3.2-3B and the tiny model tie
``lm_head`` to ``embed_tokens``): refused at start-up with why and what to target instead, before a step
runs, instead of dying at the first checkpoint (``KeyError: "attribute 'weight' already exists"``)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from train_helpers import compose_config

from grace.config import ConfigError, LoraSection
from grace.distributed.lora import Lora, lora_config, refuse_tied_targets, tied_modules
from grace.model.loading import TINY_RANDOM, load_policy, tiny_config
from grace.training.validation import validate

LORA = ["model.lora.r=4", "model.lora.alpha=8"]


@pytest.mark.parametrize(
    "targets, module",
    [("[q_proj,lm_head]", "lm_head"), ("[lm_head]", "lm_head"), ("[embed_tokens]", "embed_tokens"), ("[v_proj,model.embed_tokens]", "model.embed_tokens")],
)
def test_an_adapter_on_a_tied_module_is_refused_before_the_model_loads(targets, module):
    with pytest.raises(ConfigError, match=rf"'{module}' shares its weight .*tied word embeddings.* Target the transformer layers instead: q_proj"):
        validate(compose_config(*LORA, f"model.lora.target_modules={targets}"))


@pytest.mark.parametrize("targets", ["[q_proj,v_proj]", "[all-linear]", "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"])
def test_adapters_on_the_transformer_layers_are_accepted(targets):
    validate(compose_config(*LORA, f"model.lora.target_modules={targets}"))


def test_the_loaded_model_is_checked_too_whatever_the_names(tiny):
    """A source validation cannot read (a hub id, a .gguf file) is checked once loaded, by the tensors shared."""
    model, _ = load_policy(TINY_RANDOM)
    assert tied_modules(model) == {"lm_head": ["model.embed_tokens"], "model.embed_tokens": ["lm_head"]}
    with pytest.raises(ConfigError, match="'lm_head' shares its weight with 'model.embed_tokens'"):
        Lora(model, LoraSection(r=4, alpha=8, target_modules=["q_proj", "lm_head"]), TINY_RANDOM)
    assert not any(".lora_" in name for name, _ in model.named_modules())  # refused before peft touched it


class SharedHead(torch.nn.Module):
    """Two modules of other names holding one tensor, as a custom architecture might."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.readout = torch.nn.Linear(4, 10, bias=False)
        self.readout.weight = self.table.weight


def test_tied_modules_are_found_by_the_tensor_not_by_the_name():
    model = SharedHead()
    assert tied_modules(model) == {"readout": ["table"], "table": ["readout"]}
    with pytest.raises(ConfigError, match="'readout' shares its weight with 'table'"):
        refuse_tied_targets(model, lora_config(LoraSection(r=2, target_modules=["readout"])), ["readout"])
    refuse_tied_targets(model, lora_config(LoraSection(r=2, target_modules=["proj"])), ["proj"])


def test_an_untied_model_may_adapt_its_head(tmp_path, tiny):
    _, tokenizer = tiny
    config = tiny_config(len(tokenizer))
    config.tie_word_embeddings = False
    from transformers import LlamaForCausalLM

    untied = LlamaForCausalLM(config)
    assert tied_modules(untied) == {}
    untied.save_pretrained(tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    validate(compose_config(*LORA, "model.lora.target_modules=[q_proj,lm_head]", f"model.source={tmp_path / 'untied'}"))
    Lora(untied, LoraSection(r=4, alpha=8, target_modules=["q_proj", "lm_head"]), str(tmp_path / "untied"))
    assert untied.lm_head.lora_A  # the adapter is in place


def test_grace_train_refuses_it_in_one_line_with_exit_status_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "grace.cli.train", "model=tiny-random", *LORA, "model.lora.target_modules=[q_proj,lm_head]",
         "logger=none", f"trainer.output_dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("grace-train: invalid configuration: model.lora.target_modules=['q_proj', 'lm_head']: 'lm_head'")
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoints").exists()
