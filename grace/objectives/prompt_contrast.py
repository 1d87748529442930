"""What contrastive fine-tuning and SimCSE share: InfoNCE updates on pooled prompt embeddings.

No rationale is generated. Each text is rendered with the chat template exactly as for GRACE (system
prompt, template, text cut to ``embedding.max_prompt_tokens``), run through the model with gradient and
pooled with ``embedding.pooling`` over the prompt's spans: the embedding ``GraceEncoder`` computes for a
checkpoint saved with ``rationale=False`` (tested equal). A subclass says which rows are anchors and which
are their candidates (``ContrastProblem``); this module does the rest.

Mini-batches: a step's examples are split into ``trainer.mini_batch_size`` examples per optimizer
update, each its own InfoNCE problem (its in-batch candidates). Micro-batches: InfoNCE couples every row
of an update, so rows cannot simply be accumulated. When an update holds more than
``trainer.micro_batch_size`` rows, a gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup", arXiv 2101.06983) keeps it exact: embed every micro-batch without
gradient, take the loss's gradient with respect to the embeddings, then re-run each micro-batch with
gradient and back-propagate its slice. The random state is replayed for the second pass, so dropout
masks are the same in both (tested equal to one full-batch backward).

Under torchrun each rank embeds the rows of its share of the update's examples
(``grace.distributed.ranks.local_examples``) and the embeddings of every rank are gathered without gradient:
the InfoNCE loss sees the update's whole set of in-batch candidates, as in one process. Each rank's own
rows carry their gradient into that loss, so the gradients the engine averages over ranks add up to the
one-process gradient (``grace.distributed.parallel``).
"""
from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch

from grace.config import ConfigError
from grace.data import Sentence, Triplet
from grace.distributed.ranks import gather_rows, local_examples
from grace.embedding.pipeline import EmbeddingConfig
from grace.model.forward import hidden_and_logits, position_ids
from grace.model.pooling import pool_hidden
from grace.model.prompts import Prompt, PromptBatch, render_prompt
from grace.objectives.base import Objective, StepResult, TrainContext
from grace.objectives.dropout import attention_dropout, attention_modules
from grace.objectives.infonce import InfoNCEOutput, info_nce
from grace.objectives.optimizer import apply_update


@dataclass
class ContrastProblem:
    """One update's InfoNCE problem over R rendered prompts, each embedded once."""

    prompts: list[Prompt]  # [R]
    example: torch.Tensor  # [R] long, which example of the update each row comes from
    anchors: torch.Tensor  # [N] long, row of each anchor
    candidates: torch.Tensor  # [M] long, row of each candidate
    targets: torch.Tensor  # [N] long, index into `candidates` of each anchor's partner
    exclude: torch.Tensor  # [N, M] bool, candidates that do not count for an anchor (same text as its partner)


def same_text_as_partner(partner_texts: list[str], candidate_texts: list[str], targets: torch.Tensor) -> torch.Tensor:
    """[N, M] bool: candidate j holds the same text as anchor i's partner but is not the partner itself.

    Such a candidate embeds exactly like the partner (without dropout), so counting it as a negative would
    push the anchor away from its own partner: e.g. a chatterbot answer that is one triplet's positive and
    another's negative in the same batch.
    """
    same = torch.tensor([[c.strip() == p.strip() for c in candidate_texts] for p in partner_texts], dtype=torch.bool)
    same = same.reshape(len(partner_texts), len(candidate_texts))
    if len(partner_texts):
        same[torch.arange(len(partner_texts)), targets] = False
    return same


def embed_prompts(model: torch.nn.Module, prompts: list[Prompt], pad_id: int, pooling: str) -> torch.Tensor:
    """[B, H] float32 L2-normalised pooled embeddings of rendered prompts, with gradient if enabled. ``model``:
    a causal LM or its wrapped ``LMForward`` (``grace.model.forward.hidden_and_logits``)."""
    batch = PromptBatch.collate(prompts, pad_id)
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    hidden, _ = hidden_and_logits(model, ids, mask, position_ids(mask))
    return pool_hidden(hidden, batch.spans.to(device), pooling)


@dataclass
class ContrastStats:
    loss: float  # mean InfoNCE over anchors
    accuracy: float  # share of anchors whose partner is their most similar candidate
    positive_cos: float  # mean cos(anchor, partner)
    negative_cos: float  # mean cos(anchor, other candidates)
    mean_cos: float  # mean cosine between distinct rows' embeddings: near 1 = collapse
    grad_norm: float
    applied: bool = True  # False: the loss or gradient was not finite and the update was skipped


def contrast_update(context: TrainContext, problem: ContrastProblem, optimizer, scheduler) -> ContrastStats:
    """One optimizer update of the mean InfoNCE loss of ``problem``."""
    optimizer.zero_grad(set_to_none=True)
    out, loss, embeddings = contrast_backward(context, problem)
    outcome = apply_update(context.parallel.module, optimizer, scheduler, context.cfg.trainer.grad_clip, loss=float(loss))
    rows = len(embeddings)
    mean_cos = (float((embeddings @ embeddings.T).sum()) - float((embeddings * embeddings).sum())) / max(rows * (rows - 1), 1)
    return ContrastStats(
        loss=float(loss),
        accuracy=float(out.correct.float().mean()),
        positive_cos=float(out.positive_cos.mean()),
        negative_cos=float(out.negative_cos.mean()),
        mean_cos=mean_cos,
        grad_norm=outcome.grad_norm,
        applied=outcome.applied,
    )


def contrast_backward(context: TrainContext, problem: ContrastProblem) -> tuple[InfoNCEOutput, torch.Tensor, torch.Tensor]:
    """Accumulate the gradient of the mean InfoNCE loss of ``problem`` into ``.grad``, micro-batched with a
    gradient cache when this rank's rows exceed ``trainer.micro_batch_size``.

    Returns the InfoNCE output, the mean loss (detached) and the embeddings [R, H] of every row (detached).
    """
    cfg, parallel = context.cfg, context.parallel
    pad_id, pooling, objective = context.tokenizer.pad_token_id, cfg.embedding.pooling, cfg.objective
    mine = own_rows(problem)
    prompts = [problem.prompts[i] for i in mine.tolist()]
    size = cfg.trainer.micro_batch_size
    chunks = [prompts[i : i + size] for i in range(0, len(prompts), size)]  # as many on every rank (equal shares)

    def loss_of(embeddings: torch.Tensor) -> tuple[InfoNCEOutput, torch.Tensor]:
        out = info_nce(
            embeddings[problem.anchors],
            embeddings[problem.candidates],
            problem.targets,
            temperature=objective.temperature,
            exclude=problem.exclude,
        )
        return out, out.loss.mean()

    module, scale = parallel.module, parallel.loss_scale
    module.train()
    with attention_dropout(context.model, objective.dropout):
        if len(chunks) == 1:
            with context.autocast:
                own = embed_prompts(module, prompts, pad_id, pooling)
            # Every rank's rows, this rank's with their gradient.
            embeddings = gather_rows(own, mine).index_copy(0, mine.to(own.device), own)
            out, loss = loss_of(embeddings)
            (loss * scale).backward()
        else:
            states, parts = [], []
            with torch.no_grad():
                for chunk in chunks:
                    states.append(_rng_state(context.device))
                    with context.autocast:
                        parts.append(embed_prompts(module, chunk, pad_id, pooling))
            embeddings = gather_rows(torch.cat(parts), mine).requires_grad_()
            out, loss = loss_of(embeddings)
            loss.backward()
            grads = embeddings.grad[mine.to(embeddings.device)] * scale
            for index, (chunk, state, grad) in enumerate(zip(chunks, states, grads.split([len(c) for c in chunks]))):
                _set_rng_state(state, context.device)  # the same dropout masks as in the cached pass
                with parallel.gradient_sync(last=index == len(chunks) - 1):
                    with context.autocast:
                        again = embed_prompts(module, chunk, pad_id, pooling)
                    again.backward(grad)
    module.eval()
    return out, loss.detach(), embeddings.detach()


def own_rows(problem: ContrastProblem) -> torch.Tensor:
    """[r] long, the rows of ``problem`` this rank embeds: those of its share of the update's examples."""
    count = int(problem.example.max()) + 1 if len(problem.example) else 0
    share = torch.tensor(local_examples(count, count), dtype=torch.long)
    return torch.nonzero(torch.isin(problem.example, share)).flatten()


def _rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class PromptContrast(Objective):
    """Base of the objectives that train pooled prompt embeddings with InfoNCE; subclasses define ``problem``."""

    progress_metric = ("loss", "loss/infonce")
    training_score = "infonce/accuracy"
    reads_logits = False

    def __init__(self, context: TrainContext) -> None:
        super().__init__(context)
        if context.cfg.objective.dropout > 0 and not attention_modules(context.model):
            raise ConfigError(
                f"objective.dropout={context.cfg.objective.dropout}: {type(context.model).__name__} has no attention module "
                "with an attention_dropout setting (transformers' Llama, Qwen2, Qwen3, Mistral and Gemma have one), so "
                "dropout views cannot be made: use a model of such a family"
            )

    @property
    def embedding(self) -> EmbeddingConfig:
        cfg = self.context.cfg.embedding
        return EmbeddingConfig(system_prompt=cfg.system_prompt, pooling=cfg.pooling, max_prompt_tokens=cfg.max_prompt_tokens, rationale=False)

    def updates_per_step(self) -> int:
        trainer = self.context.cfg.trainer
        return trainer.batch_size // (trainer.mini_batch_size or trainer.batch_size)

    @abstractmethod
    def problem(self, examples: Sequence[Triplet | Sentence]) -> ContrastProblem:
        """The InfoNCE problem of one mini-batch of examples."""

    def render(self, texts: list[str]) -> list[Prompt]:
        cfg = self.context.cfg.embedding
        return [render_prompt(self.context.tokenizer, text, self.context.template, cfg.max_prompt_tokens) for text in texts]

    def step(self, step: int, examples: Sequence[Triplet | Sentence], optimizer, scheduler) -> StepResult:
        per_update = self.context.cfg.trainer.mini_batch_size or len(examples)
        started = time.perf_counter()
        stats, rows, tokens, truncated = [], 0, 0, 0
        for start in range(0, len(examples), per_update):
            problem = self.problem(examples[start : start + per_update])
            stats.append(contrast_update(self.context, problem, optimizer, scheduler))
            rows += len(problem.prompts)
            tokens += sum(len(p.ids) for p in problem.prompts)
            truncated += sum(p.input_truncated for p in problem.prompts)
        applied = [s for s in stats if s.applied]  # a skipped update's numbers describe no update
        mean = lambda name: sum(getattr(s, name) for s in applied) / len(applied) if applied else math.nan  # noqa: E731
        metrics = {
            "loss/infonce": mean("loss"),
            "infonce/accuracy": mean("accuracy"),
            "infonce/positive_cos": mean("positive_cos"),
            "infonce/negative_cos": mean("negative_cos"),
            "embedding/mean_cos": mean("mean_cos"),
            "optim/grad_norm": mean("grad_norm"),
            "embedding/rows": rows,
            "embedding/prompt_tokens_mean": tokens / max(rows, 1),
            "embedding/input_truncation_rate": truncated / max(rows, 1),
            "time/prompt_tokens_per_second": tokens / max(time.perf_counter() - started, 1e-9),
        }
        return StepResult(metrics=metrics, updates=len(stats), skipped_updates=len(stats) - len(applied))
