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
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.embedding.cache import CachedEmbedding, EmbeddingCache, canonical_config
from grace.embedding.encoder_files import (  # noqa: F401  (ENCODER_CONFIG_FILE ... importable from here, as before)
    ENCODER_CONFIG_FILE,
    FORMAT_VERSION,
    dtype_name,
    generation_fingerprint,
    model_fingerprint,
    read_encoder_settings,
    resolve_model_dir,
    save_encoder,
    tokenizer_fingerprint,
    write_encoder_files,
)
from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.embedding.texts import Texts, check_not_empty, text_batch
from grace.generation.options import GenerationOptions
from grace.model.loading import cache_dir, count_parameters, load_policy
from grace.model.prompts import PromptTemplate
from grace.numerics.finite import NonFiniteError, first_nonfinite_tensors, nonfinite_rows
from grace.storage.integrity import require_whole


class NonFiniteEmbedding(NonFiniteError):
    """An encoder produced a NaN or infinite embedding; the message names the texts and the model."""


ROLES = ("document", "query")

logger = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    """For a batch of N texts; for one ``str`` (see ``grace.embedding.texts``) the leading N axis is dropped."""

    embeddings: np.ndarray  # [N, H] float32, L2-normalised ([H] for one str)
    rationales: list[str] | str  # [N] rationale behind each embedding ("" without rationale; a str for one str)
    truncated: np.ndarray  # [N] bool, the rationale hit its length limit ([] for one str)
    # What this call cost: the distinct texts it embedded and the tokens of their rationales (the first sample's,
    # EOS included; 0 without a rationale). Texts the embedding cache served count in neither.
    computed_texts: int = 0
    rationale_tokens: int = 0


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
        if location is not None and location.is_dir():  # a copy cut short must not load as a model of zeros
            require_whole(location, "the model directory")
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

    def explain_similarity(self, a: str, b: Texts, *, role_a: str = "document", role_b: str = "document", top_pairs: int = 0,
                           allow_truncated: bool = False, **overrides):  # fmt: skip
        """Why ``a`` and ``b`` (one text, or several: a list of explanations) are as close as they are: the cosine
        split exactly over each side's pooled tokens (``grace.embedding.attribution.SimilarityExplanation``), from
        the generation ``encode`` runs with each role's settings. Errors: ``grace.embedding.token_states.explain_similarity``."""
        from grace.embedding.token_states import explain_similarity

        return explain_similarity(self, a, b, role_a=role_a, role_b=role_b, top_pairs=top_pairs, allow_truncated=allow_truncated, **overrides)

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
            namespace = EmbeddingCache.namespace(self.fingerprint, self.tokenizer_fingerprint, config, self.generation_fingerprint)
            keys = {text: EmbeddingCache.key(namespace, text) for text in unique}
            by_key = self.cache.get_many(list(keys.values()))
            found = {text: by_key[key] for text, key in keys.items() if key in by_key}
            if progress is not None and found:
                progress(len(found))
        missing = [text for text in unique if text not in found]
        rationale_tokens = 0
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
            self._check_finite(out.embeddings, missing)  # before the cache: a NaN vector is never stored nor served
            rationale_tokens = int(out.rationale_lengths.sum()) if config.rationale else 0
            computed = {
                text: CachedEmbedding(out.embeddings[i].numpy(), out.rationales[i], bool(out.truncated[i]))
                for i, text in enumerate(missing)
            }
            if self.cache is not None:
                self.cache.put_many({keys[text]: entry for text, entry in computed.items()})
            found.update(computed)
        cost = {"computed_texts": len(missing), "rationale_tokens": rationale_tokens}
        if not texts:
            return EncodeResult(np.zeros((0, self.embedding_dim), np.float32), [], np.zeros(0, bool))
        if one:
            entry = found[texts[0]]
            return EncodeResult(entry.embedding.astype(np.float32), entry.rationale, np.array(entry.truncated), **cost)
        return EncodeResult(
            embeddings=np.stack([found[t].embedding for t in texts]).astype(np.float32),
            rationales=[found[t].rationale for t in texts],
            truncated=np.array([found[t].truncated for t in texts], dtype=bool),
            **cost,
        )

    def _check_finite(self, embeddings: torch.Tensor, texts: list[str]) -> None:
        """Raise ``NonFiniteEmbedding`` naming the texts and the model if a row of ``embeddings`` [N, H] is not finite:
        a NaN vector is similar to nothing, so an index of them answers every search with no hits, silently."""
        rows = nonfinite_rows(embeddings)
        if not rows:
            return
        shown = ", ".join(repr(texts[i] if len(texts[i]) <= 60 else texts[i][:57] + "...") for i in rows[:3])
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        broken, count = first_nonfinite_tensors(self.model.named_parameters())
        cause = f"{count} of its weight tensors are not finite (first {broken}): a diverged training run's weights" if count else (
            "its weights are finite, so the forward pass overflowed (try model dtype float32)"
        )
        raise NonFiniteEmbedding(
            f"encoder {self.name!r} gave NaN or infinite embeddings for {len(rows)} of {len(texts)} texts ({shown}{more}); "
            f"{cause}. Nothing was returned or cached"
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
    def generation_fingerprint(self) -> str:
        """A hash of the generation settings the model carries (see ``generation_fingerprint``); computed at
        every call, because it is cheap and ``model.generation_config`` can be changed in place."""
        return generation_fingerprint(self.model, self.tokenizer)

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
