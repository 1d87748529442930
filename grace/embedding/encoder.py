"""``GraceEncoder``: a trained (or base) GRACE model as a text encoder that explains its embeddings.

    encoder = GraceEncoder.from_pretrained("outputs/run/checkpoints/step-100")
    vectors = encoder.encode(["a text", "another"])      # [2, H] float32, L2-normalised
    reasons = encoder.explain(["a text"])                 # the rationale behind each embedding
    vector = encoder.encode("a text")                     # one str is one text: [H] (see grace.embedding.texts)

A saved encoder is a plain transformers model directory (safetensors weights, tokenizer) plus
``grace_encoder.json``, the embedding settings: system prompt, pooling, decoding and length limits,
separately for documents and queries. ``from_pretrained`` reads them back, so training, evaluation,
encoding and indexing embed a text the same way. Every path goes through ``grace.embedding.pipeline.embed``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.embedding.cache import CachedEmbedding, EmbeddingCache, canonical_config
from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.embedding.texts import Texts, check_not_empty, text_batch
from grace.generation.options import GenerationOptions
from grace.model.loading import cache_dir, count_parameters, load_policy
from grace.model.prompts import PromptTemplate
from grace.model.sources import resolve_source
from grace.storage.staging import check_replaceable, staged_directory

ENCODER_CONFIG_FILE = "grace_encoder.json"
# 2: records the dtype, and the fingerprint hashes shapes too (a version-1 fingerprint is not comparable).
FORMAT_VERSION = 2
ROLES = ("document", "query")

logger = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    """For a batch of N texts; for one ``str`` (see ``grace.embedding.texts``) the leading N axis is dropped."""

    embeddings: np.ndarray  # [N, H] float32, L2-normalised ([H] for one str)
    rationales: list[str] | str  # [N] rationale behind each embedding ("" without rationale; a str for one str)
    truncated: np.ndarray  # [N] bool, the rationale hit its length limit ([] for one str)


class GraceEncoder:
    """Embeds texts with rationales; ``document`` and ``query`` settings may differ."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        document: EmbeddingConfig | None = None,
        query: EmbeddingConfig | None = None,
        name: str = "grace",
        batch_size: int = 16,
        cache: EmbeddingCache | None = None,
        expected_fingerprint: str | None = None,
        generation: GenerationOptions | None = None,
    ):
        """``expected_fingerprint``: what the saved settings say the weights hash to; a warning is logged
        if they differ once the fingerprint is computed (lazily: hashing a large model takes seconds).
        ``generation``: how rationales are computed (``grace.generation.options``: shared prefix, continuous batching,
        compiled decoding); it never changes an embedding, so it is neither saved nor part of a cache key."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.configs = {"document": document or EmbeddingConfig(), "query": query or document or EmbeddingConfig()}
        self.name = name
        self.batch_size = batch_size
        self.cache = cache
        self.generation = generation or GenerationOptions()
        self._templates: dict[str, PromptTemplate] = {}
        self._fingerprint: str | None = None
        self._tokenizer_fingerprint: str | None = None
        self.expected_fingerprint = expected_fingerprint

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
        document: EmbeddingConfig | None = None,
        query: EmbeddingConfig | None = None,
        batch_size: int = 16,
        cache: bool | str | Path = False,
        generation: GenerationOptions | None = None,
    ) -> "GraceEncoder":
        """Load a saved encoder, a training checkpoint or run directory, the packaged model, a .gguf file (or a
        directory holding one) or any instruct model: every form ``grace.model.sources`` accepts.

        Settings saved beside the weights are used unless ``document`` / ``query`` are given. ``cache``:
        ``True`` for the default embedding cache (under ``$GRACE_CACHE``), or a path to an SQLite file.
        """
        location = resolve_model_dir(source)
        saved = read_encoder_settings(location) if location is not None and location.is_dir() else {}
        model, tokenizer = load_policy(
            str(location) if location is not None else str(source),
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
        )
        embedding_cache = None
        if cache:
            embedding_cache = EmbeddingCache(cache_dir() / "embeddings.sqlite" if cache is True else cache)
        # Weights loaded in another dtype hash differently by design: only the same dtype can be compared.
        same_dtype = saved.get("dtype") == dtype_name(model)
        return cls(
            model,
            tokenizer,
            document=document or saved.get("document"),
            query=query or saved.get("query"),
            name=saved.get("name") or str(source),
            batch_size=batch_size,
            cache=embedding_cache,
            expected_fingerprint=saved.get("fingerprint") if same_dtype else None,
            generation=generation,
        )

    def save(self, directory: str | Path) -> Path:
        """Write weights, tokenizer and settings to ``directory`` (atomically: all or nothing)."""
        return save_encoder(directory, self.model, self.tokenizer, self.configs["document"], self.configs["query"], self.name)

    def with_settings(self, document: EmbeddingConfig, query: EmbeddingConfig | None = None) -> "GraceEncoder":
        """The same weights, tokenizer and cache embedding with other settings; no copy of the model, and
        fingerprints already computed are shared."""
        other = copy.copy(self)
        other.configs = {"document": document, "query": query or document}
        return other

    # ------------------------------------------------------------------ encoding

    def encode(self, texts: Texts, *, role: str = "document", batch_size: int | None = None, **overrides) -> np.ndarray:
        """[N, H] float32 L2-normalised embeddings ([H] for one str: ``grace.embedding.texts`` says what ``texts`` may be).
        ``overrides``: EmbeddingConfig fields (rationale, decoding, ...)."""
        return self.encode_with_rationales(texts, role=role, batch_size=batch_size, **overrides).embeddings

    def explain(self, texts: Texts, *, role: str = "document", **overrides) -> list[str] | str:
        """The rationale the model writes for each text: what its embedding is made of (one str for one str)."""
        return self.encode_with_rationales(texts, role=role, **overrides).rationales

    def encode_with_rationales(
        self,
        texts: Texts,
        *,
        role: str = "document",
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        **overrides,
    ) -> EncodeResult:
        """Embeddings, rationales and truncation flags of ``texts`` (one str or a batch, see ``grace.embedding.texts``)
        from one pass. Raises ``TypeError`` for what is not text, ``ValueError`` naming an empty text's index."""
        # Embedded with the canonical settings, so a cached entry and a fresh computation agree bit for bit
        # (and no k identical "samples" are computed for a text without a rationale).
        config = canonical_config(self.config_for(role, **overrides))
        texts, one = text_batch(texts)
        check_not_empty(texts)  # before de-duplication, so the index is the caller's
        unique = list(dict.fromkeys(texts))
        found: dict[str, CachedEmbedding] = {}
        keys: dict[str, str] = {}
        if self.cache is not None:
            namespace = EmbeddingCache.namespace(self.fingerprint, self.tokenizer_fingerprint, config)
            keys = {text: EmbeddingCache.key(namespace, text) for text in unique}
            by_key = self.cache.get_many(list(keys.values()))
            found = {text: by_key[key] for text, key in keys.items() if key in by_key}
            if progress is not None and found:
                progress(len(found))
        missing = [text for text in unique if text not in found]
        if missing:
            out = embed(
                self.model,
                self.tokenizer,
                missing,
                config,
                batch_size=batch_size or self.batch_size,
                template=self._template(config.system_prompt),
                progress=progress,
                options=self.generation,
            )
            computed = {
                text: CachedEmbedding(out.embeddings[i].numpy(), out.rationales[i], bool(out.truncated[i]))
                for i, text in enumerate(missing)
            }
            if self.cache is not None:
                self.cache.put_many({keys[text]: entry for text, entry in computed.items()})
            found.update(computed)
        if not texts:
            return EncodeResult(np.zeros((0, self.embedding_dim), np.float32), [], np.zeros(0, bool))
        if one:
            entry = found[texts[0]]
            return EncodeResult(entry.embedding.astype(np.float32), entry.rationale, np.array(entry.truncated))
        return EncodeResult(
            embeddings=np.stack([found[t].embedding for t in texts]).astype(np.float32),
            rationales=[found[t].rationale for t in texts],
            truncated=np.array([found[t].truncated for t in texts], dtype=bool),
        )

    def config_for(self, role: str, **overrides) -> EmbeddingConfig:
        """The ``role`` settings with ``overrides`` applied (None = keep): EmbeddingConfig fields, Decoding
        fields given flat (``max_new_tokens=8``) or as ``decoding=`` (a Decoding, or a partial dict)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {list(ROLES)}")
        config = self.configs[role]
        overrides = {k: v for k, v in overrides.items() if v is not None}
        decoding = overrides.pop("decoding", config.decoding)
        if isinstance(decoding, dict):  # partial settings merge into the saved ones
            _check_setting_names(decoding, _DECODING_FIELDS, "decoding setting")
            decoding = replace(config.decoding, **decoding)
        _check_setting_names(overrides, _CONFIG_FIELDS | _DECODING_FIELDS, "setting")
        flat = {name: overrides.pop(name) for name in _DECODING_FIELDS & overrides.keys()}
        return replace(config, decoding=replace(decoding, **flat), **overrides)

    def _template(self, system_prompt: str) -> PromptTemplate:
        if system_prompt not in self._templates:
            self._templates[system_prompt] = PromptTemplate.build(self.tokenizer, system_prompt)
        return self._templates[system_prompt]

    # ------------------------------------------------------------------ facts about the model

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def max_tokens(self) -> int:
        return max(c.max_prompt_tokens + (c.decoding.max_new_tokens if c.rationale else 0) for c in self.configs.values())

    @property
    def tokenizer_fingerprint(self) -> str:
        """A hash of the tokenizer's part in an embedding (see ``tokenizer_fingerprint``)."""
        if self._tokenizer_fingerprint is None:
            self._tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        return self._tokenizer_fingerprint

    @property
    def dtype(self) -> str:
        """The weights' dtype as ``from_pretrained`` takes it: "float32", "bfloat16", ..."""
        return dtype_name(self.model)

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    @property
    def fingerprint(self) -> str:
        """A hash of the weights: a cache entry can never be served for a different model."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
            if self.expected_fingerprint not in (None, self._fingerprint):
                logger.warning(
                    "encoder %s: its %s records weights %s, but the loaded weights hash to %s: the weight files "
                    "were changed after the encoder was saved, so its embeddings may differ from the ones made then",
                    self.name, ENCODER_CONFIG_FILE, self.expected_fingerprint, self._fingerprint,
                )
        return self._fingerprint


_CONFIG_FIELDS = frozenset(f.name for f in fields(EmbeddingConfig))
_DECODING_FIELDS = frozenset(f.name for f in fields(Decoding))


def _check_setting_names(given: dict, valid: frozenset[str], what: str) -> None:
    unknown = sorted(given.keys() - valid)
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}: valid keys are {', '.join(sorted(valid))}")


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
