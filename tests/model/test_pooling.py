import pytest
import torch

from grace.model.pooling import pool_hidden, pooling_mask
from grace.model.prompts import Span

S, T, I, R, P = Span.SYSTEM, Span.TEMPLATE, Span.INPUT, Span.RATIONALE, Span.PAD


def hand_example():
    # One sequence: system, template, input, input, rationale; hidden states are 1-D values 1..5 (H = 2).
    spans = torch.tensor([[S, T, I, I, R]])
    hidden = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 1.0], [5.0, 2.0]]])
    return hidden, spans


@pytest.mark.parametrize(
    "method, expected",
    [
        ("after_system", [(2 + 3 + 4 + 5) / 4, (0 + 1 + 1 + 2) / 4]),
        ("rationale", [5.0, 2.0]),
        ("input", [3.5, 1.0]),
        ("last_token", [5.0, 2.0]),
    ],
)
def test_pooling_matches_hand_computed_means(method, expected):
    hidden, spans = hand_example()
    expected = torch.tensor([expected])
    assert torch.allclose(pool_hidden(hidden, spans, method), expected / expected.norm())


@pytest.mark.parametrize("method", ["after_system", "rationale", "input", "last_token"])
def test_left_and_right_padding_pool_identically(method):
    hidden, spans = hand_example()
    pad_state = torch.full((1, 2, 2), float("nan"))  # padding may hold NaN: it must never leak in
    pad_span = torch.full((1, 2), P)
    left = pool_hidden(torch.cat([pad_state, hidden], 1), torch.cat([pad_span, spans], 1), method)
    right = pool_hidden(torch.cat([hidden, pad_state], 1), torch.cat([spans, pad_span], 1), method)
    assert torch.equal(left, right)
    assert torch.isfinite(left).all()


def test_last_token_mask_picks_last_real_token_per_row():
    spans = torch.tensor([[P, S, I, R], [S, I, P, P]])
    assert pooling_mask(spans, "last_token").tolist() == [[False, False, False, True], [False, True, False, False]]


def test_rationale_pooling_without_rationale_is_an_error():
    with pytest.raises(ValueError, match="no tokens to pool"):
        pool_hidden(torch.ones(1, 2, 3), torch.tensor([[S, I]]), "rationale")


def test_unknown_pooling_is_an_error():
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling_mask(torch.tensor([[S]]), "max")
