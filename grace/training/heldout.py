"""The held-out set: examples the run never trains on, scored every ``trainer.eval_every`` steps.

Where they come from (``trainer.heldout.source``):

* ``split`` (default): ``size`` examples drawn (seeded) out of the training data, together with every
  training example that shares a text with them (chatterbot's negatives are other triplets' answers), so
  no held-out text is ever trained on;
* any data source (a file, ``packaged:chatterbot`` with ``split=eval``, ...), read as the mode's examples,
  of which ``size`` are drawn (seeded); the training data stays whole.

How they are scored, by kind of example (each score larger-is-better; the first is the primary one,
which ``trainer.keep_best`` and the reward-vs-held-out guard follow):

* triplets: ``eval/triplet_accuracy``, the share of queries closer to their positive than to their
  negative, and ``eval/triplet_margin``, the mean cos(q, p) - cos(q, n);
* sentences: ``eval/halves_accuracy``: each text is cut at its middle word and the first half must find
  its own second half, by cosine, among the second halves of all held-out texts (texts under 4 words are
  left out); an unsupervised analogue of retrieval;
* demonstrations (objective=sft with ``source=split``): ``eval/token_accuracy`` and ``eval/sft_loss``, the
  loss of ``grace.objectives.sft_loss`` on the held-out rationales.

Texts are embedded through ``grace.embedding.pipeline.embed`` with the checkpoint's own ``EmbeddingConfig``
(greedy rationales), exactly as ``GraceEncoder`` would embed them. Also logged: ``eval/mean_cos`` (mean
cosine between different texts' embeddings: near 1 is a collapse) and, for rationale-writing checkpoints,
``eval/rationale_words_mean``, ``eval/truncation_rate`` and ``eval/repetition_rate`` (share of repeated
word 3-grams) of the greedy rationales: the guards' quantities, free of sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grace.config import ConfigError, TrainConfig
from grace.data import Demonstration, Example, Sentence, Triplet
from grace.embedding.pipeline import EmbeddingConfig, embed
from grace.generation.options import GenerationOptions
from grace.model.prompts import PromptTemplate
from grace.objectives.sft_loss import demonstration_batch, rationale_nll
from grace.rewards.degenerate import repeated_ngram_fraction, words
from grace.rewards.statistics import different_text_mean_cos

PRIMARY = {Triplet: "eval/triplet_accuracy", Sentence: "eval/halves_accuracy", Demonstration: "eval/token_accuracy"}
MIN_WORDS = 4  # a sentence needs two halves of at least two words


@dataclass
class HeldOutSet:
    examples: list[Example]
    description: str  # where they come from, for the console

    @property
    def primary(self) -> str:
        """The metric key of the primary score of these examples."""
        return PRIMARY[type(self.examples[0])]


def example_texts(example: Example) -> tuple[str, ...]:
    if isinstance(example, Triplet):
        return (example.query, example.positive, example.negative)
    return (example.text,)


def draw(examples: Sequence[Example], size: int, seed: int) -> list[int]:
    """Indices of ``size`` examples drawn without replacement, a function of ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919)
    return sorted(torch.randperm(len(examples), generator=generator)[:size].tolist())


def split_heldout(examples: Sequence[Example], size: int, seed: int) -> tuple[list[Example], list[Example], int]:
    """(training examples, held-out examples, training examples dropped for sharing a held-out text);
    the training examples keep their order."""
    chosen = set(draw(examples, size, seed))
    heldout = [examples[i] for i in sorted(chosen)]
    texts = {text for example in heldout for text in example_texts(example)}
    rest = [examples[i] for i in range(len(examples)) if i not in chosen]
    train = [example for example in rest if not texts.intersection(example_texts(example))]
    return train, heldout, len(rest) - len(train)


def heldout_from_config(
    cfg: TrainConfig, examples: list[Example], read: Callable[[str, str], list[Example]]
) -> tuple[list[Example], HeldOutSet | None]:
    """(training examples, held-out set) for ``cfg.trainer``: no held-out set without ``eval_every``.
    ``read(source, split)`` reads a given source's examples (checked as the training data is)."""
    settings = cfg.trainer.heldout
    if cfg.trainer.eval_every == 0:
        return examples, None
    if settings.source == "split":
        if settings.size >= len(examples):
            raise ConfigError(f"trainer.heldout.size={settings.size} leaves none of the {len(examples)} training examples to train on")
        train, heldout, dropped = split_heldout(examples, settings.size, cfg.seed)
        shared = f"; {dropped} training examples that share a text with them left out" if dropped else ""
        return train, HeldOutSet(heldout, f"{len(heldout)} held-out examples taken out of the training data{shared}")
    pool = read(settings.source, settings.split)
    chosen = [pool[i] for i in draw(pool, min(settings.size, len(pool)), cfg.seed)]
    return examples, HeldOutSet(chosen, f"{len(chosen)} held-out examples drawn from {settings.source} ({settings.split})")


def halves(text: str) -> tuple[str, str] | None:
    """The text cut at its middle word; None for texts under ``MIN_WORDS`` words."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    middle = len(words) // 2
    return " ".join(words[:middle]), " ".join(words[middle:])


def triplet_scores(query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> dict[str, float]:
    """Accuracy and margin of N triplets from L2-normalised embeddings [N, H] each."""
    margin = (query * positive).sum(-1) - (query * negative).sum(-1)
    return {"eval/triplet_accuracy": float((margin > 0).float().mean()), "eval/triplet_margin": float(margin.mean())}


def halves_accuracy(first: torch.Tensor, second: torch.Tensor) -> dict[str, float]:
    """Share of first halves [N, H] whose most similar second half [N, H] is their own (L2-normalised)."""
    found = (first @ second.T).argmax(dim=1)
    return {"eval/halves_accuracy": float((found == torch.arange(len(first))).float().mean())}


@torch.no_grad()
def score(
    heldout: HeldOutSet,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    embedding: EmbeddingConfig,
    *,
    batch_size: int,
    options: GenerationOptions = GenerationOptions(),
    query_embedding: EmbeddingConfig | None = None,
) -> dict[str, float]:
    """Every ``eval/*`` score of the held-out set under ``model`` (see the module docstring); leaves the
    random state as it found it, so a run with evaluation trains exactly as one without. ``options``: how
    rationales are computed (``grace.generation.engine``; the run's ``generation`` settings), never what they are.
    ``query_embedding``: how queries (a triplet's query, the first half of a sentence) embed when not as
    ``embedding`` (embedding.rationales=queries: documents as plain text); None: every text as ``embedding``."""
    with torch.random.fork_rng():
        if isinstance(heldout.examples[0], Demonstration):
            return _demonstration_scores(heldout.examples, model, tokenizer, template, embedding, batch_size)
        return _embedding_scores(heldout.examples, model, tokenizer, template, embedding, batch_size, options, query_embedding)


def _embedding_scores(examples, model, tokenizer, template, embedding, batch_size, options, query_embedding=None) -> dict[str, float]:
    if isinstance(examples[0], Triplet):
        texts = [text for example in examples for text in example_texts(example)]
    else:
        pairs = [pair for pair in (halves(example.text) for example in examples) if pair is not None]
        if len(pairs) < 2:
            raise ValueError(f"the held-out set has {len(pairs)} texts of at least {MIN_WORDS} words; halves accuracy needs 2")
        texts = [half for pair in pairs for half in pair]
    if query_embedding is not None:
        return _asymmetric_scores(examples, texts, model, tokenizer, template, embedding, query_embedding, batch_size, options)
    out = embed(model, tokenizer, texts, embedding, batch_size=batch_size, template=template, options=options)
    if isinstance(examples[0], Triplet):
        scores = triplet_scores(out.embeddings[0::3], out.embeddings[1::3], out.embeddings[2::3])
    else:
        scores = halves_accuracy(out.embeddings[0::2], out.embeddings[1::2])
    scores["eval/mean_cos"] = different_text_mean_cos(out.embeddings, texts)
    if embedding.rationale:  # in words: the decoded text is all that embed returns of a rationale
        rationale_words = [words(rationale) for rationale in out.rationales]
        scores["eval/rationale_words_mean"] = sum(len(w) for w in rationale_words) / len(rationale_words)
        scores["eval/truncation_rate"] = float(out.truncated.float().mean())
        scores["eval/repetition_rate"] = sum(repeated_ngram_fraction(w) for w in rationale_words) / len(rationale_words)
    return scores


def _asymmetric_scores(examples, texts, model, tokenizer, template, embedding, query_embedding, batch_size, options) -> dict[str, float]:
    """The scores of ``_embedding_scores`` with queries (every triplet's first text, every sentence's first half)
    embedded by ``query_embedding`` and the other texts by ``embedding``; rationale statistics of the queries."""
    stride = 3 if isinstance(examples[0], Triplet) else 2
    queries = embed(model, tokenizer, texts[0::stride], query_embedding, batch_size=batch_size, template=template, options=options)
    documents = [text for i, text in enumerate(texts) if i % stride]
    docs = embed(model, tokenizer, documents, embedding, batch_size=batch_size, template=template, options=options)
    if stride == 3:
        scores = triplet_scores(queries.embeddings, docs.embeddings[0::2], docs.embeddings[1::2])
    else:
        scores = halves_accuracy(queries.embeddings, docs.embeddings)
    every = torch.cat([queries.embeddings, docs.embeddings])
    scores["eval/mean_cos"] = different_text_mean_cos(every, texts[0::stride] + documents)
    if query_embedding.rationale:
        rationale_words = [words(rationale) for rationale in queries.rationales]
        scores["eval/rationale_words_mean"] = sum(len(w) for w in rationale_words) / len(rationale_words)
        scores["eval/truncation_rate"] = float(queries.truncated.float().mean())
        scores["eval/repetition_rate"] = sum(repeated_ngram_fraction(w) for w in rationale_words) / len(rationale_words)
    return scores


def _demonstration_scores(examples, model, tokenizer, template, embedding, batch_size) -> dict[str, float]:
    nll, tokens, correct = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = demonstration_batch(tokenizer, template, examples[start : start + batch_size], embedding.max_prompt_tokens)
        out = rationale_nll(model, batch)
        nll, tokens, correct = nll + float(out.nll_sum), tokens + out.tokens, correct + out.correct
    return {"eval/token_accuracy": correct / tokens, "eval/sft_loss": nll / tokens}
