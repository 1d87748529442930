"""objective=contrastive: supervised contrastive fine-tuning, the GRACE paper's strongest baseline.

For B triplets (q_i, p_i, n_i) of one update, every text is embedded without a rationale and query i
picks its positive among the B positives and, with ``objective.hard_negatives``, the B negatives of the
update (InfoNCE with ``objective.temperature``; the supervised SimCSE loss, Gao et al. 2021, eq. 5).
A candidate with the same text as the query's own positive (an answer that is another triplet's negative)
is left out of that query's denominator.
"""
from __future__ import annotations

from typing import Sequence

import torch

from grace.data import Triplet
from grace.objectives.prompt_contrast import ContrastProblem, PromptContrast, same_text_as_partner


class ContrastiveFineTuning(PromptContrast):
    name = "contrastive"

    def problem(self, examples: Sequence[Triplet]) -> ContrastProblem:
        b = len(examples)
        queries, positives = [e.query for e in examples], [e.positive for e in examples]
        candidates = positives + ([e.negative for e in examples] if self.context.cfg.objective.hard_negatives else [])
        targets = torch.arange(b)
        return ContrastProblem(
            prompts=self.render(queries + candidates),
            example=torch.arange(b + len(candidates)) % b,
            anchors=torch.arange(b),  # rows: the queries, then the positives, then the negatives
            candidates=torch.arange(b, b + len(candidates)),
            targets=targets,
            exclude=same_text_as_partner(positives, candidates, targets),
        )
