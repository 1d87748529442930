"""A GRACE encoder as an mteb 2.x encoder: every embedding goes through the training embed function.

    adapter = GraceMtebEncoder(GraceEncoder.from_pretrained("packaged:smollm2-135m", cache=True),
                               EmbeddingOptions(rationale=True, max_new_tokens=64))
    mteb.evaluate(adapter, tasks, cache=mteb.ResultCache(output_dir / "mteb"))

Why an adapter of our own instead of mteb's stock wrappers:

* Same path as training. ``GraceEncoder.encode_with_rationales`` calls ``grace.embedding.pipeline.embed``: the
  same prompt, spans and pooling as the rollouts, no decode-and-re-tokenise pass (the official
  evaluation's second forward over decoded text differs from what training pooled).
* Roles. Retrieval passes ``PromptType.query`` for queries and ``PromptType.document`` for the corpus;
  they map to the encoder's ``query`` / ``document`` settings. Every other task type is symmetric and
  uses the document settings.
* Honest metadata. mteb's result cache is keyed by (model name, revision) and, with its default
  ``only-missing`` strategy, serves stale scores for a key it has seen. Here the revision is derived from
  the weights' fingerprint and a hash of every embedding setting, so a retrained checkpoint or a changed
  decoding setting can never be served another model's scores; the dimension and parameter count are
  read from the model (the official code declared 7B parameters and 4096 dimensions for a 1.5B model).
* Cost. A text costs one generated rationale, so each distinct text is embedded once per call, and with
  an embedding cache on the ``GraceEncoder`` (keyed by fingerprint, settings and text) a repeated text or
  a re-run costs a lookup. Texts go to the encoder in chunks, each chunk cached when it finishes, so a
  killed multi-hour run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType
from tqdm.auto import tqdm

from grace.embedding.cache import EMBED_VERSION, canonical_config
from grace.embedding.encoder import ROLES, GraceEncoder
from grace.embedding.pipeline import EmbeddingConfig
from grace.embedding.texts import check_not_empty, text_batch
from grace.model.sources import PACKAGED_SMOLLM2

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

NAME_PREFIX = "grace"  # mteb wants "organisation/model"; ours are all "grace/<encoder name>"
_PACKAGED_LICENSE = {PACKAGED_SMOLLM2: "apache-2.0"}  # SmolLM2-135M-Instruct
_CONFIG_FIELDS = tuple(f.name for f in fields(EmbeddingConfig))


@dataclass(frozen=True)
class EmbeddingOptions:
    """Evaluation-time overrides of an encoder's saved embedding settings; ``None`` keeps the saved value.

    They apply to both roles. ``batch_size`` is rationales generated together (``batch_size // num_samples``
    texts); mteb's own ``encode_kwargs["batch_size"]`` only sizes its data loader and is ignored, because
    our cost is generation, not the loader. Settings that cannot change an embedding (decoding without a
    rationale, seed and top_p when greedy) are canonicalised, so they never split caches or result folders.
    """

    rationale: bool | None = None
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    seed: int | None = None  # used only when temperature > 0
    num_samples: int | None = None  # > 1: average the embeddings of several sampled rationales
    max_new_tokens: int | None = None  # the rationale length limit
    max_prompt_tokens: int | None = None  # the prompt budget (system block + template + text)
    pooling: str | None = None  # e.g. "input" for the plain mean over the text
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def apply(self, config: EmbeddingConfig) -> EmbeddingConfig:
        """``config`` with these overrides; invalid combinations raise here (via ``Decoding``)."""
        decoding_overrides = {
            name: getattr(self, name)
            for name in ("temperature", "top_p", "seed", "num_samples", "max_new_tokens")
            if getattr(self, name) is not None
        }
        prompt_overrides = {
            name: getattr(self, name) for name in ("max_prompt_tokens", "pooling") if getattr(self, name) is not None
        }
        config = replace(config, **prompt_overrides)
        rationale = config.rationale if self.rationale is None else self.rationale
        if not rationale:  # decoding overrides are moot (and need not validate against the saved decoding)
            return canonical_config(replace(config, rationale=False))
        decoding = replace(config.decoding, **decoding_overrides)
        return canonical_config(replace(config, rationale=True, decoding=decoding))


@dataclass
class EncodeStats:
    """What the adapter embedded, per role: the rationale truncation rate belongs beside any score."""

    texts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))  # occurrences, not unique
    truncated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLES, 0))
    # The cost side: distinct texts computed (not served by the embedding cache), their rationale tokens (EOS
    # included, 0 for a role without a rationale) and the wall seconds encode spent on them, all roles together.
    computed_texts: int = 0
    rationale_tokens: int = 0
    seconds: float = 0.0

    @property
    def truncation_rate(self) -> float | None:
        total = sum(self.texts.values())
        return sum(self.truncated.values()) / total if total else None

    @property
    def rationale_tokens_per_text(self) -> float | None:
        """Mean rationale tokens per computed text (texts embedded without a rationale count 0); None: none computed."""
        return self.rationale_tokens / self.computed_texts if self.computed_texts else None

    @property
    def texts_per_second(self) -> float | None:
        """Distinct texts embedded per wall second of encoding (generation included); None: none computed."""
        return self.computed_texts / self.seconds if self.computed_texts and self.seconds > 0 else None


class GraceMtebEncoder(AbsEncoder):
    """mteb's encoder protocol over a ``GraceEncoder`` (loaded once, shared by every task)."""

    def __init__(
        self,
        encoder: GraceEncoder,
        options: EmbeddingOptions = EmbeddingOptions(),
        *,
        name: str | None = None,
        chunk_size: int = 256,
    ) -> None:
        """``name`` (default: the encoder's name) becomes ``grace/<name>`` in mteb's results.

        ``chunk_size``: distinct texts per call to the encoder. Its embedding cache is written once per
        call, so a long run that is killed resumes from its last finished chunk, not from the task start.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.model = encoder
        self.encoder = encoder
        self.options = options
        self.chunk_size = chunk_size
        self.configs: dict[str, EmbeddingConfig] = {role: options.apply(encoder.config_for(role)) for role in ROLES}
        self.stats = EncodeStats()
        self.mteb_model_meta = build_model_meta(encoder, self.configs, name=name)

    @property
    def rationale(self) -> bool:
        return any(config.rationale for config in self.configs.values())

    def encode(
        self,
        inputs: DataLoader[Any],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """[N, H] float32 L2-normalised embeddings of the ``"text"`` of every batch, in order.

        A batch's ``"text"`` follows ``grace.embedding.texts``: a list of strings, or one ``str`` (an unbatched loader).
        """
        where = f"{task_metadata.name} ({hf_subset}, {hf_split})"
        texts: list[str] = []
        for number, batch in enumerate(inputs):
            texts += text_batch(batch["text"], name=f"{where}: batch {number} text")[0]
        check_not_empty(texts, where)  # all checked up front: chunk 9 must not fail after hours of 1-8
        role = "query" if prompt_type == PromptType.query else "document"
        config = self.configs[role]
        unique = list(dict.fromkeys(texts))
        row_of = {text: row for row, text in enumerate(unique)}
        embeddings = np.zeros((len(unique), self.encoder.embedding_dim), dtype=np.float32)
        truncated = np.zeros(len(unique), dtype=bool)
        started = time.perf_counter()
        with tqdm(
            total=len(unique),
            desc=f"{task_metadata.name} {role}s" + (" + rationale" if config.rationale else ""),
            unit="text",
            mininterval=10,
            disable=not kwargs.get("show_progress_bar", True),
        ) as bar:
            for start in range(0, len(unique), self.chunk_size):
                result = self.encoder.encode_with_rationales(
                    unique[start : start + self.chunk_size],
                    role=role,
                    batch_size=self.options.batch_size,
                    progress=bar.update,
                    **{name: getattr(config, name) for name in _CONFIG_FIELDS},  # exactly this role's settings
                )
                embeddings[start : start + len(result.embeddings)] = result.embeddings
                truncated[start : start + len(result.truncated)] = result.truncated
                self.stats.computed_texts += result.computed_texts
                self.stats.rationale_tokens += result.rationale_tokens
        self.stats.seconds += time.perf_counter() - started
        rows = [row_of[text] for text in texts]
        self.stats.texts[role] += len(texts)
        self.stats.truncated[role] += int(truncated[rows].sum())
        return embeddings[rows]


def settings_hash(configs: dict[str, EmbeddingConfig], tokenizer_fingerprint: str = "", generation_fingerprint: str = "") -> str:
    """A short stable hash of every embedding setting of both roles, the tokenizer (chat template included),
    the model's generation settings (its stop tokens: ``grace.embedding.encoder.generation_fingerprint``)
    and the embed code."""
    settings = {role: configs[role].to_dict() for role in ROLES}
    described = {"embed_version": EMBED_VERSION, "tokenizer": tokenizer_fingerprint, **settings}
    if generation_fingerprint:  # absent from revisions written before it was hashed: those keep their value
        described["generation"] = generation_fingerprint
    key = json.dumps(described, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def model_revision(encoder: GraceEncoder, configs: dict[str, EmbeddingConfig]) -> str:
    """``<weights fingerprint>-<settings hash>``: mteb's result folder for exactly this model and setting,
    so a changed template or embed path can never be served stale scores from mteb's result cache."""
    return f"{encoder.fingerprint[:16]}-{settings_hash(configs, encoder.tokenizer_fingerprint, encoder.generation_fingerprint)}"


_MAX_NAME = 96  # mteb makes a folder of the name; sweep-job names can be long


def mteb_model_name(name: str) -> str:
    """``grace/<name>`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced: mteb turns the
    name into a folder, so a checkpoint path must not become nested folders. A long name keeps its start
    and gets a hash of the whole, so two long names stay distinct."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removeprefix(f"{NAME_PREFIX}/")).strip("-.") or "encoder"
    if len(slug) > _MAX_NAME:
        slug = f"{slug[: _MAX_NAME - 9]}-{hashlib.sha256(slug.encode()).hexdigest()[:8]}"
    return f"{NAME_PREFIX}/{slug}"


def build_model_meta(
    encoder: GraceEncoder, configs: dict[str, EmbeddingConfig], *, name: str | None = None
) -> ModelMeta:
    """mteb metadata measured on the model itself, not declared by hand."""
    parameters = encoder.num_parameters
    bytes_per_parameter = next(encoder.model.parameters()).element_size()
    license = _PACKAGED_LICENSE.get(encoder.name)
    return ModelMeta(
        loader=None,  # built in-process around an already loaded model
        name=mteb_model_name(name or encoder.name),
        revision=model_revision(encoder, configs),
        release_date=None,
        languages=None,
        n_parameters=parameters,
        memory_usage_mb=round(parameters * bytes_per_parameter / 2**20, 1),
        max_tokens=max(c.max_prompt_tokens for c in configs.values()),  # input budget; rationales are extra
        embed_dim=encoder.embedding_dim,
        license=license,
        open_weights=True if license else None,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers"],
        similarity_fn_name="cosine",
        use_instructions=False,  # one fixed system prompt, no task instruction (as in the paper)
        training_datasets=None,
        modalities=["text"],
    )
