"""A saved encoder on disk: its files, its settings file (``grace_encoder.json``) and the fingerprints that
say which weights, tokenizer and generation settings made its embeddings.

A saved encoder is a plain transformers model directory (safetensors weights, tokenizer) plus
``grace_encoder.json``: format version, name, dtype, weights fingerprint, and the embedding settings for
documents and queries. The fingerprints key every cache and recorded revision (``grace.embedding.cache``,
the index manifest, mteb revisions), so anything that changes an embedding changes one of them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.embedding.pipeline import EmbeddingConfig
from grace.generation.rollout import stop_token_ids
from grace.model.sources import resolve_source
from grace.storage.integrity import write_file_manifest
from grace.storage.staging import check_replaceable, staged_directory

ENCODER_CONFIG_FILE = "grace_encoder.json"
# 2: records the dtype, and the fingerprint hashes shapes too (a version-1 fingerprint is not comparable).
FORMAT_VERSION = 2


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: name, dtype, shape and bytes (the shape too, because a [2, 3]
    and a [3, 2] tensor can hold the same bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        # reshape(-1) first: a 0-dim tensor (a scalar buffer) cannot be viewed as bytes directly.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of what in a tokenizer decides an embedding besides the weights: the chat template (it renders
    the prompt), the special tokens and their ids (padding, EOS, the span boundaries) and the vocabulary
    size. Saving and reloading a tokenizer keeps it."""
    special = {name: str(token) for name, token in tokenizer.special_tokens_map.items()}
    described = {
        "chat_template": tokenizer.chat_template,
        "special_tokens": special,
        "special_ids": {token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens},
        "vocab_size": len(tokenizer),
    }
    return hashlib.blake2b(json.dumps(described, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def generation_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the generation settings a model directory carries that change an embedding: the tokens that
    end a rationale (``grace.generation.rollout.stop_token_ids``: the tokenizer's EOS plus
    ``generation_config.json``'s ``eos_token_id``, one id or a list of stop tokens). A stop token added there
    ends rationales earlier, so it must split every cache and revision as a weight change does."""
    described = {"stop_token_ids": stop_token_ids(model, tokenizer)}
    return hashlib.blake2b(json.dumps(described, sort_keys=True).encode(), digest_size=16).hexdigest()


def dtype_name(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def resolve_model_dir(source: str | Path) -> Path | None:
    """The local model ``source`` names: a model directory (for a training run, its newest checkpoint) or a
    .gguf file (also when ``source`` is a directory holding one); None for a packaged name, ``tiny-random``
    or a hub id. Raises ``grace.model.sources.ModelSourceError`` for a path that is no model source."""
    resolved = resolve_source(source)
    return resolved.path if resolved.local else None


def read_encoder_settings(directory: Path) -> dict:
    """The settings of a saved encoder, or {} when ``directory`` has none:
    ``{"document": EmbeddingConfig, "query": EmbeddingConfig, "name": str | None, "fingerprint": str | None,
    "dtype": str | None}`` (fingerprint and dtype: None when written by a version-1 grace)."""
    path = directory / ENCODER_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid GRACE encoder config ({error})") from error
    if isinstance(version, int) and version > FORMAT_VERSION:  # refused before anything is read wrongly
        raise ValueError(
            f"{path} was written by a newer grace (format version {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade grace to load this encoder"
        )
    try:
        if version not in range(1, FORMAT_VERSION + 1):
            raise ValueError(f"unknown format_version {version!r}")
        return {
            "document": EmbeddingConfig.from_dict(raw["document"]),
            "query": EmbeddingConfig.from_dict(raw["query"]),
            "name": raw.get("name"),
            "fingerprint": raw.get("fingerprint") if version >= 2 else None,
            "dtype": raw.get("dtype"),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid GRACE encoder config ({error})") from error


def save_encoder(
    directory: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    document: EmbeddingConfig,
    query: EmbeddingConfig | None = None,
    name: str = "grace",
) -> Path:
    """Weights (safetensors), tokenizer and ``grace_encoder.json`` in ``directory``.

    ``directory`` must be missing, empty, or a saved encoder (which is replaced): anything else may be a
    training run or the user's files, and is refused rather than wiped. The files are written to a
    staging directory and swapped into place (``staged_directory``), so an interrupted save never leaves
    a half-written encoder, and the previous one stays readable until the new one is complete.
    """
    target = Path(directory)
    check_replaceable(target, marker=ENCODER_CONFIG_FILE, what="a saved GRACE encoder")
    with staged_directory(target) as staging:
        write_encoder_files(staging, model, tokenizer, document, query, name)
        write_file_manifest(staging, editable=[ENCODER_CONFIG_FILE])  # last: a copy cut short is found on loading
    return target


def write_encoder_files(
    directory: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    document: EmbeddingConfig,
    query: EmbeddingConfig | None,
    name: str,
) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    settings = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "dtype": dtype_name(model),
        "fingerprint": model_fingerprint(model),
        "document": document.to_dict(),
        "query": (query or document).to_dict(),
    }
    (directory / ENCODER_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
