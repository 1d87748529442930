"""Shared test setup: no hub access, wandb offline, and a small model cache per session."""
from __future__ import annotations

import os

# Set before anything imports transformers, datasets or wandb: hub look-ups must fail fast here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from grace.model.loading import TINY_RANDOM, load_policy  # noqa: E402
from grace.model.prompts import PromptTemplate  # noqa: E402
from grace.model.sources import PACKAGED_SMOLLM2
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT

_CORES = max(1, min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _threads(request):
    """One thread for tiny-model tests (their ops are too small to split, and extra threads only spin
    when the machine is busy); all cores for the slow tests on the packaged model."""
    torch.set_num_threads(_CORES if request.node.get_closest_marker("slow") else 1)


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): a random two-layer Llama with the packaged SmolLM2 tokenizer. Do not train it in
    place: tests that update weights load their own copy with ``load_policy(TINY_RANDOM)``."""
    return load_policy(TINY_RANDOM)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the packaged SmolLM2-135M-Instruct in float32 (slow tests only)."""
    return load_policy(PACKAGED_SMOLLM2)


@pytest.fixture(scope="session")
def tiny_template(tiny):
    return PromptTemplate.build(tiny[1], GRACE_SYSTEM_PROMPT)
