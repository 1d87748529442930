"""Evaluate several encoders on the same tasks and put them side by side: the Python API under ``grace-eval``.

    table = evaluate_encoders(
        [EncoderSpec(label="base", rationale=False), EncoderSpec(label="base + rationale", rationale=True),
         EncoderSpec(label="GRACE", source="outputs/run")],   # a run directory: its newest checkpoint
        tasks=["offline"], output_dir="outputs/eval/baselines")
    print(table.to_markdown())

``before_after`` is the main training job's table (base model without and with a rationale, then the
trained model) on the quick subset ``QUICK_TASKS`` / ``QUICK_SETTINGS``, which fits in a few minutes on
two CPU cores; pass the trained model in memory (``EncoderSpec.encoder``) to skip reloading it.

Where results go: mteb's result cache (``<output_dir>/mteb`` unless ``settings.results_dir``), one folder
per mteb model name and revision, and the revision encodes the weights and every embedding setting, so
sweep jobs sharing a results folder never overwrite each other and never serve each other stale scores.
``results.json`` and ``results.md`` are rewritten after every encoder, so a long run that dies keeps the
rows it finished. Embeddings go to the on-disk embedding cache (``settings.embedding_cache``): a second
identical evaluation, in any output folder, costs lookups and no generation.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import mteb
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.results import ModelResult

from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import EmbeddingConfig
from grace.evaluation.adapter import EmbeddingOptions, GraceMtebEncoder, settings_hash
from grace.evaluation.benchmarks import check_data_available
from grace.evaluation.config import EvalSettings, ModelConfig
from grace.evaluation.reference import load_sentence_transformer
from grace.evaluation.report import ComparisonTable, EncoderResult
from grace.evaluation.tasks import OFFLINE_SUITE, SMALL_SUITE, get_tasks
from grace.model.sources import PACKAGED_SMOLLM2, resolve_source

logger = logging.getLogger(__name__)

# The main job's before/after subset: Lee document similarity alone (50 news documents, 1225 rated pairs,
# ~7,400 prompt tokens) with 32-token greedy rationales. On 2 shared CPU cores the prompt pass runs at
# ~60-150 tokens/s, so one row costs ~1-3 minutes; the small suite's polarity task would add ~14,000 prompt
# tokens per row (measured in experiments/offline_suite/README.md).
QUICK_TASKS: tuple[str, ...] = ("GraceLeeSTS",)
QUICK_SETTINGS = EvalSettings(max_new_tokens=32, batch_size=16)
TRAINED_LABELS = {True: "GRACE-trained + rationale", False: "trained (no rationale)"}


@dataclass
class EncoderSpec(ModelConfig):
    """A ``ModelConfig`` that may carry an already loaded encoder (then ``source`` only names it), or the
    embedding settings to use instead of the ones saved with ``source`` (``like``: another encoder's)."""

    encoder: GraceEncoder | None = field(default=None, repr=False, compare=False)
    like: dict[str, EmbeddingConfig] | None = field(default=None, repr=False)  # role -> settings

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.encoder is not None or self.like is not None) and self.kind != "grace":
            raise ValueError("EncoderSpec.encoder and .like are for GraceEncoders: use them with kind='grace'")


def evaluate_encoders(
    specs: Sequence[EncoderSpec | ModelConfig],
    tasks: Sequence[str] = SMALL_SUITE,
    output_dir: str | Path = "outputs/eval",
    settings: EvalSettings = EvalSettings(),
) -> ComparisonTable:
    """Evaluate every encoder on every task; write mteb results, ``results.json`` and ``results.md``.

    ``tasks``: offline task names, suite names (``"offline"``, ``"small"``) or mteb task names. Encoders
    with the same ``source`` are loaded once; each is released after its last row.
    """
    if not specs:
        raise ValueError("no encoders to evaluate")
    output_dir = Path(output_dir)
    resolved = get_tasks(list(tasks))  # unknown names and unreachable data fail before any model loads
    check_data_available(resolved, OFFLINE_SUITE)
    task_names = [task.metadata.name for task in resolved]
    for spec in specs:  # so do model sources that are none of the accepted forms
        if spec.kind == "grace" and getattr(spec, "encoder", None) is None:
            resolve_source(spec.source)
    results_cache = mteb.ResultCache(settings.results_dir or output_dir / "mteb")
    table = ComparisonTable(
        tasks=task_names,
        main_scores={t.metadata.name: t.metadata.main_score for t in resolved},
        context={
            "settings": asdict(settings),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "mteb_version": mteb.__version__,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    )
    loaded = _LoadedModels(settings)
    for index, spec in enumerate(specs):
        started = time.perf_counter()
        encoder = loaded.mteb_encoder(spec)
        load_seconds = time.perf_counter() - started
        label = spec.label or _default_label(spec, encoder)
        meta = encoder.mteb_model_meta
        logger.info("evaluating %s (%s revision %s)", label, meta.name, meta.revision)
        started = time.perf_counter()
        result = mteb.evaluate(
            encoder,
            get_tasks(list(tasks)),  # fresh task objects (mteb keeps loaded data on them), benchmark subsets kept
            cache=results_cache,
            overwrite_strategy=settings.overwrite,
            encode_kwargs={"batch_size": settings.batch_size, "show_progress_bar": settings.show_progress},
            show_progress_bar=False,  # one bar per task and role comes from the adapter's encode
            co2_tracker=False,
        )
        table.rows.append(_row(label, encoder, result, load_seconds, time.perf_counter() - started))
        table.write(output_dir)
        if not any(_load_key(later) == _load_key(spec) for later in specs[index + 1 :]):
            loaded.release(spec)  # free the weights before loading the next model
    return table


def before_after(
    trained: str | Path | GraceEncoder,
    output_dir: str | Path,
    *,
    base: str = PACKAGED_SMOLLM2,
    tasks: Sequence[str] = QUICK_TASKS,
    settings: EvalSettings = QUICK_SETTINGS,
) -> ComparisonTable:
    """The main job's table: the base model without and with a rationale, then the trained model, embedding
    with or without a rationale as its saved settings say.

    ``trained``: a checkpoint or run directory, or the trained ``GraceEncoder`` itself (no reload). The
    base rows embed with the trained model's saved settings (system prompt, pooling, prompt budget), so
    the rows differ in their weights alone; they are served from the embedding cache after their first run.
    """
    if not isinstance(trained, GraceEncoder):
        trained = _load_grace(str(trained), settings)
    like = dict(trained.configs)
    # The trained row embeds as it was trained: with a rationale (GRACE) or without (contrastive, SimCSE).
    rationale = trained.configs["document"].rationale
    specs = [
        EncoderSpec(source=base, label="base (no rationale)", rationale=False, like=like),
        EncoderSpec(source=base, label="base + rationale", rationale=True, like=like),
        EncoderSpec(source=trained.name, label=TRAINED_LABELS[rationale], rationale=rationale, encoder=trained),
    ]
    return evaluate_encoders(specs, tasks, output_dir, settings)


def embedding_options(settings: EvalSettings, spec: ModelConfig) -> EmbeddingOptions:
    return EmbeddingOptions(
        rationale=spec.rationale,
        pooling=spec.pooling,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        num_samples=settings.num_samples,
        max_new_tokens=settings.max_new_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        batch_size=settings.batch_size,
    )


def _load_grace(source: str, settings: EvalSettings) -> GraceEncoder:
    return GraceEncoder.from_pretrained(
        source,
        dtype=settings.dtype,
        device=settings.device,
        batch_size=settings.batch_size,
        cache=(settings.embedding_cache or True) if settings.cache_embeddings else False,
        generation=settings.generation,
    )


def _load_key(spec: ModelConfig) -> tuple[str, str]:
    return spec.kind, spec.source


class _LoadedModels:
    """Models loaded during one ``evaluate_encoders`` call, shared by the rows that name the same source."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self.grace: dict[tuple[str, str], GraceEncoder] = {}
        self.references: dict[tuple[str, str], AbsEncoder] = {}

    def mteb_encoder(self, spec: ModelConfig) -> AbsEncoder:
        key, settings = _load_key(spec), self.settings
        if spec.kind == "sentence-transformers":
            if key not in self.references:
                self.references[key] = load_sentence_transformer(spec.source, device=settings.device)
            return self.references[key]
        encoder = getattr(spec, "encoder", None)  # EncoderSpec: already loaded by the caller
        if encoder is None:
            if key not in self.grace:
                self.grace[key] = _load_grace(spec.source, settings)
            encoder = self.grace[key]
        like = getattr(spec, "like", None)
        if like is not None:  # the same weights, embedding as another encoder does
            encoder = encoder.with_settings(like["document"], like["query"])
        return GraceMtebEncoder(encoder, embedding_options(settings, spec))

    def release(self, spec: ModelConfig) -> None:
        self.grace.pop(_load_key(spec), None)
        self.references.pop(_load_key(spec), None)


def _default_label(spec: ModelConfig, encoder: AbsEncoder) -> str:
    if isinstance(encoder, GraceMtebEncoder) and encoder.rationale:
        return f"{spec.source} + rationale"
    return spec.source


def _row(label: str, encoder: AbsEncoder, result: ModelResult, load: float, elapsed: float) -> EncoderResult:
    if result.exceptions:
        raise RuntimeError(f"{label}: mteb reported errors: {result.exceptions}")
    meta = encoder.mteb_model_meta
    grace = encoder if isinstance(encoder, GraceMtebEncoder) else None
    return EncoderResult(
        label=label,
        model_name=meta.name,
        revision=meta.revision,
        rationale=bool(grace and grace.rationale),
        scores={r.task_name: float(r.get_score()) for r in result.task_results},
        task_seconds={r.task_name: float(r.evaluation_time or 0.0) for r in result.task_results},
        load_seconds=round(load, 2),
        eval_seconds=round(elapsed, 2),
        texts_embedded=sum(grace.stats.texts.values()) if grace else 0,
        truncation_rate=grace.stats.truncation_rate if grace and grace.rationale else None,
        rationale_tokens_per_text=grace.stats.rationale_tokens_per_text if grace else None,
        texts_per_second=grace.stats.texts_per_second if grace else None,
        # mteb's result cache answered every task: encode was never called, so time and truncation say nothing.
        from_cache=bool(grace) and sum(grace.stats.texts.values()) == 0,
        settings=_settings_record(grace) if grace else {},
    )


def _settings_record(grace: GraceMtebEncoder) -> dict:
    """What results.json keeps of a row's embedding settings: both roles and their hash."""
    configs = grace.configs
    hashed = settings_hash(configs, grace.encoder.tokenizer_fingerprint, grace.encoder.generation_fingerprint)
    return {"settings_hash": hashed, **{r: c.to_dict() for r, c in configs.items()}}
