"""What every rank knows of a step's global rollout batch: the rows every reward component sees.

One process holds its whole batch. Under torchrun each rank rolls out a share of the examples
(``grace.distributed.ranks.local_examples``); the rewards of GRACE (InfoNCE candidates, cross-group terms, the
paper variant's max over other groups) and any user component may compare rows of different ranks, so
each rank gathers every rank's pooled embeddings, labels and rationale token ids (no gradient: [R, H]
floats and [R, T] ids, small next to a step), laid out in the order one process would hold them. The
input texts need no communication: every rank reads the whole global batch of examples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from grace.distributed.ranks import gather_rows, max_over_ranks
from grace.generation.rollout import RolloutBatch
from grace.model.rows import RationaleRows
from grace.rewards import RewardInputs


@dataclass
class SharedRollout(RationaleRows):
    """The global batch's R rollouts in global row order (one process: its own batch)."""

    embeddings: torch.Tensor  # [R, H] float32, L2-normalised
    group: torch.Tensor  # [R] long, position of the row's example in the global batch
    role: torch.Tensor  # [R] long, grace.generation.rollout.Role
    truncated: torch.Tensor  # [R] bool, the rationale hit its limit without EOS
    input_truncated: torch.Tensor  # [R] bool, the input text was cut to the prompt budget
    rationale_ids: torch.Tensor  # [R, T] long, generated token ids; padding where the mask is False
    rationale_mask: torch.Tensor  # [R, T] bool, real rationale tokens
    texts: list[str]  # [R] input text of each rollout

    @classmethod
    def gather(cls, batch: RolloutBatch, rows: torch.Tensor, texts: Sequence[str]) -> "SharedRollout":
        """This rank's ``batch``, whose row i is global row ``rows[i]``, joined with every other rank's;
        ``texts``: [R] the global batch's input texts, in global row order."""
        labels = torch.stack([batch.group, batch.role, batch.truncated.long(), batch.input_truncated.long()], dim=1)
        labels = gather_rows(labels, rows)
        # Rationales are right-padded to this rank's longest: pad to the longest of any rank first.
        width = int(max_over_ranks(batch.rationale_ids.shape[1]))
        ids = torch.nn.functional.pad(batch.rationale_ids, (0, width - batch.rationale_ids.shape[1]))
        mask = torch.nn.functional.pad(batch.rationale_mask, (0, width - batch.rationale_mask.shape[1]))
        return cls(
            embeddings=gather_rows(batch.embeddings, rows),
            group=labels[:, 0],
            role=labels[:, 1],
            truncated=labels[:, 2].bool(),
            input_truncated=labels[:, 3].bool(),
            rationale_ids=gather_rows(ids, rows),
            rationale_mask=gather_rows(mask, rows),
            texts=list(texts),
        )

    def reward_inputs(self, step: int, decode: Callable[[list[int]], str]) -> RewardInputs:
        return RewardInputs(
            self.embeddings, self.group, self.role, self.truncated, self.rationale_ids, self.rationale_mask, self.texts,
            step=step, decode=decode,
        )  # fmt: skip
