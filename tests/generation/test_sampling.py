import torch

from grace.generation.sampling import row_generators, sample_next, scaled_log_probs


def test_greedy_rows_take_the_argmax_and_report_untempered_log_probs():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    tokens, logprobs = sample_next(logits, torch.zeros(2), torch.ones(2), row_generators([0, 1]))
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_log_probs_are_temperature_scaled():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    expected = torch.log_softmax(logits / 0.5, dim=-1)
    assert torch.allclose(scaled_log_probs(logits, torch.tensor([0.5])), expected)


def test_tiny_top_p_always_keeps_the_top_token():
    logits = torch.tensor([[0.0, 0.5, 0.4]]).repeat(50, 1)
    tokens, _ = sample_next(logits, torch.ones(50), torch.full((50,), 1e-3), row_generators(range(50)))
    assert (tokens == 1).all()


def test_top_p_never_samples_outside_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(400, 1)
    tokens, _ = sample_next(logits, torch.ones(400), torch.full((400,), 0.7), row_generators(range(400)))
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 0.15 and 0.05 are cut


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    n = 4000
    tokens, _ = sample_next(probs.log().repeat(n, 1), torch.ones(n), torch.ones(n), row_generators(range(n)))
    frequencies = torch.bincount(tokens, minlength=3).float() / n
    assert torch.allclose(frequencies, probs, atol=0.03)


def test_a_row_seed_gives_the_same_token_whatever_the_batch():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    alone, _ = sample_next(logits, torch.ones(1), torch.ones(1), row_generators([42]))
    batch = torch.cat([torch.randn(3, 50), logits])
    together, _ = sample_next(batch, torch.ones(4), torch.ones(4), row_generators([1, 2, 3, 42]))
    assert together[3] == alone[0]


def test_a_plain_row_samples_the_same_beside_a_nucleus_row():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    alone, _ = sample_next(logits[:1], torch.ones(1), torch.ones(1), row_generators([5]))
    mixed, _ = sample_next(logits, torch.ones(2), torch.tensor([1.0, 0.5]), row_generators([5, 6]))
    assert mixed[0] == alone[0]
