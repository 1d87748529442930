"""objective=simcse: unsupervised SimCSE (Gao et al. 2021, arXiv 2104.08821, eq. 1).

Each of the B sentences of an update is embedded twice, without a rationale, in one batch of 2B rows
whose attention-dropout masks differ (``objective.dropout``; ``grace.objectives.dropout`` says why on the
attention weights); the first view of sentence i picks its second view among the B second views
(InfoNCE with ``objective.temperature``), as in SimCSE's code. A sentence that occurs twice in one update
(the stream crossing an epoch boundary) is left out of its twin's denominator.
"""
from __future__ import annotations

from typing import Sequence

import torch

from grace.data import Sentence
from grace.objectives.prompt_contrast import ContrastProblem, PromptContrast, same_text_as_partner


class SimCSE(PromptContrast):
    name = "simcse"

    def problem(self, examples: Sequence[Sentence]) -> ContrastProblem:
        b = len(examples)
        texts = [e.text for e in examples]
        targets = torch.arange(b)
        return ContrastProblem(
            prompts=self.render(texts + texts),
            example=torch.arange(2 * b) % b,
            anchors=torch.arange(b),  # rows: the first views, then the second views
            candidates=torch.arange(b, 2 * b),
            targets=targets,
            exclude=same_text_as_partner(texts, texts, targets),
        )
