"""InfoNCE on hand-computed vectors: values, exclusions, accuracy, gradients, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from grace.objectives.infonce import info_nce

# Candidates on the unit circle: cos(a, c) for a = [1, 0] is 1, 0, -1; for a = [0, 1] it is 0, 1, 0.
CANDIDATES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_the_loss_is_minus_the_log_probability_of_the_partner_at_the_temperature():
    anchors = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])  # the last one is normalised here
    out = info_nce(anchors, CANDIDATES, torch.tensor([0, 1, 1]), temperature=0.5)
    # logits = cos / 0.5: [2, 0, -2] for [1, 0]; [0, 2, 0] for [0, 1]
    expected = [
        math.log(math.exp(2) + 1 + math.exp(-2)) - 2,  # 0.14293
        math.log(math.exp(2) + 1 + math.exp(-2)) - 0,  # 2.14293
        math.log(2 + math.exp(2)) - 2,  # 0.23950
    ]
    assert out.loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.correct.tolist() == [True, False, True]
    assert out.positive_cos.tolist() == pytest.approx([1.0, 0.0, 1.0], abs=1e-6)
    assert out.negative_cos.tolist() == pytest.approx([-0.5, 0.0, 0.0], abs=1e-6)  # mean over the other two


def test_excluded_candidates_leave_the_denominator():
    anchors = torch.tensor([[1.0, 0.0]])
    exclude = torch.tensor([[True, False, False]])  # the best candidate is, e.g., a duplicate of the partner's text
    out = info_nce(anchors, CANDIDATES, torch.tensor([1]), temperature=0.5, exclude=exclude)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)  # 0.12693
    assert out.correct.tolist() == [True]  # now the partner beats the only other allowed candidate
    only_partner = info_nce(anchors, CANDIDATES, torch.tensor([1]), temperature=0.5, exclude=torch.tensor([[True, False, True]]))
    assert only_partner.loss.item() == pytest.approx(0.0, abs=1e-7)
    assert only_partner.negative_cos.item() == 0.0


def test_a_tie_with_another_candidate_is_not_counted_as_correct():
    out = info_nce(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([0]), temperature=0.1)
    assert out.correct.tolist() == [False]
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # a collapsed encoder: chance level


def test_values_and_gradients_equal_cross_entropy_on_cosine_logits():
    torch.manual_seed(0)
    anchors = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 6, 2, 2])
    out = info_nce(anchors, candidates, targets, temperature=0.07)
    logits = F.normalize(anchors.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T / 0.07
    reference = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(out.loss, reference, atol=1e-5)
    grad = torch.autograd.grad(out.loss.sum(), [anchors, candidates])
    grad_reference = torch.autograd.grad(reference.sum(), [anchors, candidates])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grad, grad_reference))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"targets": torch.tensor([3])}, "targets must index the 3 candidates"),
        ({"targets": torch.tensor([0.0])}, "targets must be a long tensor"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"exclude": torch.tensor([[True, False, False]])}, "own partner is excluded"),
        ({"exclude": torch.tensor([[False, False]])}, r"exclude must be a bool tensor of shape \[1, 3\]"),
        ({"candidates": torch.zeros(3, 4)}, "must share H"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    args = {"anchors": torch.tensor([[1.0, 0.0]]), "candidates": CANDIDATES, "targets": torch.tensor([0]), "temperature": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        info_nce(args.pop("anchors"), args.pop("candidates"), args.pop("targets"), **args)
