"""objective=sft: supervised fine-tuning of the policy on rationale demonstrations (``grace-sft``).

    demonstrations (text, rationale) -> the rollout layout of grace.objectives.sft_loss -> token-mean NLL of the
    rationale tokens (EOS included), prompt masked out -> AdamW updates in mini-batches

The warm start of two-stage training (arXiv 2511.16073): teach the policy to write rationales of the
wanted form before GRPO polishes them. The checkpoints embed as GRACE checkpoints do (a greedy rationale
of ``rollout.max_new_tokens``), so they serve as ``model.source`` for ``grace-train`` and as encoders.
"""
from __future__ import annotations

import math
from typing import Sequence

from grace.data import Demonstration
from grace.distributed.ranks import local_examples, reduce_sums, sum_over_ranks, world
from grace.embedding.pipeline import EmbeddingConfig
from grace.objectives.base import Objective, StepResult
from grace.objectives.optimizer import apply_update
from grace.objectives.policy_gradient.step import rationale_embedding
from grace.objectives.sft_loss import demonstration_batch, rationale_nll


class SupervisedFineTuning(Objective):
    name = "sft"
    progress_metric = ("loss", "loss/sft")
    training_score = "sft/token_accuracy"

    @property
    def embedding(self) -> EmbeddingConfig:
        return rationale_embedding(self.context.cfg)

    def updates_per_step(self) -> int:
        cfg = self.context.cfg
        return cfg.trainer.batch_size // (cfg.trainer.mini_batch_size or cfg.trainer.batch_size)

    def step(self, step: int, examples: Sequence[Demonstration], optimizer, scheduler) -> StepResult:
        context, cfg, parallel = self.context, self.context.cfg, self.context.parallel
        per_update = cfg.trainer.mini_batch_size or cfg.trainer.batch_size
        mine = local_examples(len(examples), per_update)  # this rank's share of every update (all of it in one process)
        share = per_update // world().size  # examples of one update on this rank
        context.model.train()
        nll, tokens, correct, grad_norms, updates, skipped = 0.0, 0, 0, 0.0, 0, 0
        for start in range(0, len(mine), share):
            update = [examples[i] for i in mine[start : start + share]]
            batch = demonstration_batch(context.tokenizer, context.template, update, cfg.embedding.max_prompt_tokens)
            update_tokens = int(sum_over_ranks(batch.rationale_mask.sum()))  # over every rank's share: the global mean
            nll_before, correct_before = nll, correct
            optimizer.zero_grad(set_to_none=True)
            # Each micro-batch's sum is divided by the update's token count: the gradients add up to the token mean.
            for rows, real in parallel.micro_batches(batch.group, cfg.trainer.micro_batch_size):
                with context.autocast:
                    out = rationale_nll(parallel.module, batch.select(rows))
                (out.nll_sum / update_tokens * (parallel.loss_scale if real else 0.0)).backward()
                if real:
                    nll, correct = nll + float(out.nll_sum.detach()), correct + out.correct
            tokens += update_tokens
            outcome = apply_update(parallel.module, optimizer, scheduler, cfg.trainer.grad_clip, loss=nll - nll_before)
            updates += 1
            if outcome.applied:
                grad_norms += outcome.grad_norm
            else:  # its numbers stay out of the logged means: they describe no update
                nll, correct, tokens, skipped = nll_before, correct_before, tokens - update_tokens, skipped + 1
        summed = reduce_sums({"nll": nll, "correct": correct})
        nll, correct = summed["nll"], summed["correct"]
        context.model.eval()
        applied = updates - skipped
        loss = nll / tokens if applied else math.nan  # over the applied updates' tokens
        metrics = {
            "loss/sft": loss,  # token-mean NLL of the step's rationale tokens
            "sft/perplexity": math.exp(min(loss, 50.0)) if applied else math.nan,
            "sft/token_accuracy": correct / tokens if applied else math.nan,  # rationale tokens that were the model's most likely next token
            "sft/rationale_tokens_mean": tokens / len(examples),
            "optim/grad_norm": grad_norms / applied if applied else math.nan,
        }
        return StepResult(metrics=metrics, updates=updates, skipped_updates=skipped)
