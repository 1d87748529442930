"""The one embed function: texts -> (embeddings, rationales), shared by evaluation, encoding and indexing.

It is built from the very pieces training uses (prompt rendering, generation with on-the-fly pooling),
so the embedding of a text at evaluation is computed exactly as during training: same prompt, same
spans, same pooling, no decode-and-re-tokenise round trip.

Decoding is greedy by default, so an embedding is a deterministic function of the text. Sampled
rationales are seeded per text (from the seed, the text and the sample index), so a text gets the same
rationale whatever else is in its batch, and several samples can be averaged into one embedding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.data.roles import Role
from grace.embedding.texts import Texts, check_not_empty, text_batch
from grace.generation.options import GenerationOptions
from grace.generation.rollout import RoleSampling, RolloutBatch, RolloutRequest, rollout
from grace.generation.sampling import derived_seed
from grace.model.pooling import check_pooling
from grace.model.prompts import PromptTemplate
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT


@dataclass(frozen=True)
class Decoding:
    """How rationales are produced when embedding."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0  # only used when temperature > 0
    max_new_tokens: int = 256
    num_samples: int = 1  # > 1: average the embeddings of several sampled rationales

    def __post_init__(self) -> None:
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 needs temperature > 0: greedy rationales are all the same")
        RoleSampling(self.num_samples, self.temperature, self.top_p, self.max_new_tokens)  # validates


@dataclass(frozen=True)
class EmbeddingConfig:
    """Everything besides the weights that decides an embedding; saved beside every model we write."""

    system_prompt: str = GRACE_SYSTEM_PROMPT
    pooling: str = "after_system"
    max_prompt_tokens: int = 1024
    rationale: bool = True
    decoding: Decoding = field(default_factory=Decoding)

    def __post_init__(self) -> None:
        check_pooling(self.pooling)
        if self.pooling == "rationale" and not self.rationale:
            raise ValueError("pooling='rationale' needs rationale=True")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "EmbeddingConfig":
        values = dict(values)
        values["decoding"] = Decoding(**values.get("decoding", {}))
        return cls(**values)


@dataclass
class EmbedOutput:
    """For a batch of N texts; for one ``str`` (see ``grace.embedding.texts``) the leading N axis is dropped."""

    embeddings: torch.Tensor  # [N, H] float32 on CPU, L2-normalised ([H] for one str)
    rationales: list[str] | str  # [N] the (first) rationale of each text; "" without rationale (a str for one str)
    truncated: torch.Tensor  # [N] bool, the (first) rationale hit max_new_tokens without EOS ([] for one str)
    rationale_lengths: torch.Tensor  # [N] long, generated tokens of the (first) rationale, EOS included ([] for one str)
    sample_rationales: list = field(default_factory=list)  # [N][num_samples] str when num_samples > 1 ([num_samples])

    def single(self) -> "EmbedOutput":
        """The output of a batch of one, for one text."""
        samples = self.sample_rationales[0] if self.sample_rationales else []
        return EmbedOutput(self.embeddings[0], self.rationales[0], self.truncated[0], self.rationale_lengths[0], samples)


def text_seed(seed: int, text: str, sample: int) -> int:
    """A stable 63-bit seed for one sample of one text (Python's hash() changes between processes)."""
    return derived_seed(f"{seed}\x00{sample}\x00{text}")


def embed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    config: EmbeddingConfig = EmbeddingConfig(),
    *,
    batch_size: int = 16,
    template: PromptTemplate | None = None,
    progress: Callable[[int], None] | None = None,
    options: GenerationOptions = GenerationOptions(),
) -> EmbedOutput:
    """Embed ``texts`` (one ``str`` or a batch, see ``grace.embedding.texts``); identical texts are computed once.

    ``progress(n)`` is called as texts finish. ``batch_size``: rationales decoded together. ``options``: how
    they are computed (shared prefix, continuous batching, compiled decoding; ``grace.generation.engine``), never what
    they are. Raises ``TypeError`` for what is not text and ``ValueError`` naming the index of an empty text.
    """
    texts, one = text_batch(texts)
    check_not_empty(texts)
    template = template or PromptTemplate.build(tokenizer, config.system_prompt)
    decoding = config.decoding
    k = decoding.num_samples
    unique = list(dict.fromkeys(texts))
    # Similar lengths together: less padding per batch.
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]), reverse=True)
    embeddings: dict[str, torch.Tensor] = {}
    rationales: dict[str, list[str]] = {}
    truncated: dict[str, bool] = {}
    lengths: dict[str, int] = {}
    report = _TextProgress(progress, k)
    # Texts go to the engine a window at a time: it keeps its slots busy across batches within a window,
    # and the window bounds the memory the finished rows' token tensors take.
    window = max(_TEXTS_PER_CALL, batch_size // k)
    for start in range(0, len(order), window):
        chunk = [unique[i] for i in order[start : start + window]]
        batch = rollout_texts(model, tokenizer, chunk, config, template, batch_size=batch_size, options=options, progress=report)
        mean = torch.nn.functional.normalize(batch.embeddings.view(len(chunk), k, -1).mean(dim=1), dim=-1)
        decoded = _decode_rationales(tokenizer, batch.rationale_ids, batch.rationale_mask)
        for i, text in enumerate(chunk):
            embeddings[text] = mean[i].float().cpu()
            rationales[text] = decoded[i * k : (i + 1) * k]
            truncated[text] = bool(batch.truncated[i * k])
            lengths[text] = int(batch.rationale_lengths[i * k])
    out = EmbedOutput(
        embeddings=torch.stack([embeddings[t] for t in texts]) if texts else torch.zeros(0, 0),
        rationales=[rationales[t][0] for t in texts],
        truncated=torch.tensor([truncated[t] for t in texts], dtype=torch.bool),
        rationale_lengths=torch.tensor([lengths[t] for t in texts], dtype=torch.long),
        sample_rationales=[rationales[t] for t in texts] if decoding.num_samples > 1 else [],
    )
    return out.single() if one else out


def rollout_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    config: EmbeddingConfig,
    template: PromptTemplate,
    *,
    batch_size: int = 16,
    options: GenerationOptions = GenerationOptions(),
    progress: Callable[[int], None] | None = None,
) -> RolloutBatch:
    """The rollout ``embed`` pools: ``num_samples`` rows per text of ``texts`` (distinct), text-major, each
    seeded from the text (``text_seed``). Also what ``grace.embedding.token_states`` re-reads token by token,
    so an explanation and an embedding come from one generation."""
    decoding = config.decoding
    k = decoding.num_samples
    sampling = RoleSampling(
        num_samples=k,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        max_new_tokens=decoding.max_new_tokens if config.rationale else 0,
    )
    requests = [RolloutRequest(text, group, Role.QUERY) for group, text in enumerate(texts)]
    seeds = [text_seed(decoding.seed, text, s) for text in texts for s in range(k)]
    return rollout(
        model,
        tokenizer,
        template,
        requests,
        {Role.QUERY: sampling},
        pooling=config.pooling,
        max_prompt_tokens=config.max_prompt_tokens,
        seeds=seeds,
        batch_size=batch_size,
        options=options,
        progress=progress,
    )


# Distinct texts per call of the engine (see embed).
_TEXTS_PER_CALL = 1024


class _TextProgress:
    """Turns finished rollout rows into finished texts (k rows per text) for a ``progress`` callback."""

    def __init__(self, progress: Callable[[int], None] | None, k: int):
        self.progress, self.k, self.rows, self.reported = progress, k, 0, 0

    def __call__(self, rows: int) -> None:
        self.rows += rows
        texts = self.rows // self.k - self.reported
        if texts and self.progress is not None:
            self.progress(texts)
        self.reported += texts


def _decode_rationales(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[keep].tolist(), skip_special_tokens=True) for row, keep in zip(ids, mask)]
