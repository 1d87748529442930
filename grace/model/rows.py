"""What every batch of rationale rows shares: the rationale's token ids, its mask, its length.

A row's rationale is stored either on its own (``rationale_ids`` and ``rationale_mask`` [R, T]: what the
rewards and the global batch hold) or after its prompt in one sequence (``sequence_ids`` and ``spans``
[R, P + T], prompt left-padded to ``prompt_length`` P: what generation writes and the update re-reads).
``RationaleRows`` gives every container the same derived fields; ``SequenceRows`` derives the rationale
from the sequence, so the two layouts can never disagree about which tokens are the rationale.
"""
from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch

from grace.model.prompts import Span

Rows = TypeVar("Rows", bound="RationaleRows")


class RationaleRows:
    """Base of every row container (each a dataclass): R rows, one rationale each."""

    rationale_ids: torch.Tensor  # [R, T] long, generated token ids (EOS included); padding where the mask is False
    rationale_mask: torch.Tensor  # [R, T] bool, real rationale tokens

    @property
    def rationale_lengths(self) -> torch.Tensor:  # [R] long, tokens (EOS included)
        return self.rationale_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.rationale_ids.shape[0]

    def take(self: Rows, index: torch.Tensor) -> Rows:
        """Rows ``index`` [r] long, in that order: every per-row field (a tensor with R rows, a list of R
        entries) indexed, every other field (widths, an empty list, a callable) kept."""
        count = len(self)

        def pick(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == count:
                return value[index]
            if isinstance(value, list) and value and len(value) == count:
                return [value[i] for i in index.tolist()]
            return value

        return dataclasses.replace(self, **{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init})


class SequenceRows(RationaleRows):
    """Rows stored as prompt + rationale in one sequence; the rationale fields are views of it."""

    sequence_ids: torch.Tensor  # [R, P + T] long
    spans: torch.Tensor  # [R, P + T] long, Span labels
    prompt_length: int  # P

    @property
    def rationale_ids(self) -> torch.Tensor:  # [R, T]
        return self.sequence_ids[:, self.prompt_length :]

    @property
    def rationale_mask(self) -> torch.Tensor:  # [R, T] bool
        return self.spans[:, self.prompt_length :] == Span.RATIONALE
