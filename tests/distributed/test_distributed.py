"""grace.distributed.ranks and grace.distributed.parallel's collectives: in one process, and on two gloo ranks."""
import torch
from distributed_helpers import run_ranks

from grace.distributed.launch import launch_time
from grace.distributed.parallel import Parallel
from grace.distributed.ranks import gather_rows, local_examples, max_over_ranks, reduce_sums, sum_over_ranks, world
from grace.model.loading import tiny_config


def test_in_one_process_every_helper_is_the_identity():
    assert world().size == 1 and world().is_main
    assert local_examples(6, 3) == list(range(6))
    values = torch.tensor([[1.0], [2.0], [3.0]])
    assert torch.equal(gather_rows(values, torch.tensor([2, 0, 1])), torch.tensor([[2.0], [3.0], [1.0]]))
    assert float(sum_over_ranks(2.5)) == 2.5 and float(max_over_ranks(3)) == 3
    assert reduce_sums({"a": 1.0, "b": 2.0}, frozenset({"b"})) == {"a": 1.0, "b": 2.0}


def _two_ranks() -> None:
    from grace.distributed.ranks import init_from_env

    layout = init_from_env()
    rank = layout.rank
    assert layout.size == 2

    # Each rank takes its half of every update's examples.
    assert local_examples(8, 4) == ([0, 1, 4, 5] if rank == 0 else [2, 3, 6, 7])

    # Uneven row counts (3 and 1), interleaved global positions: padded for the all-gather, then trimmed.
    rows = torch.tensor([0, 2, 3]) if rank == 0 else torch.tensor([1])
    values = (rows.float() * 10).unsqueeze(1).repeat(1, 2)  # row i holds 10 i
    gathered = gather_rows(values, rows)
    assert torch.equal(gathered, torch.tensor([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])), gathered
    flags = gather_rows(rows % 2 == 1, rows)
    assert flags.dtype == torch.bool and flags.tolist() == [False, True, False, True]
    assert not gather_rows(values.requires_grad_(), rows).requires_grad

    assert float(sum_over_ranks(rank + 1.0)) == 3.0
    assert float(max_over_ranks(rank * 5)) == 5
    assert reduce_sums({"n": 1.0 + rank, "top": 2.0 - rank}, frozenset({"top"})) == {"n": 3.0, "top": 2.0}
    stamps = [None, None]
    torch.distributed.all_gather_object(stamps, launch_time())
    assert stamps[0] == stamps[1]

    # Uneven micro-batch counts become equal: the rank with fewer rows fills in zero-weight chunks.
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    parallel = Parallel(LlamaForCausalLM(tiny_config(64)), "ddp")
    mine = torch.arange(5) if rank == 0 else torch.tensor([7])
    chunks = [(rows.tolist(), real) for rows, real in parallel.micro_batches(mine, 2)]
    expected = [([0, 1], True), ([2, 3], True), ([4], True)] if rank == 0 else [([7], True), ([7], False), ([7], False)]
    assert chunks == expected, chunks
    assert parallel.loss_scale == 2.0


def test_on_two_ranks_rows_gather_in_global_order_and_counts_reduce():
    run_ranks(_two_ranks, timeout=300)


def test_an_untied_lm_head_is_frozen_for_objectives_that_do_not_read_logits():
    from transformers import LlamaForCausalLM

    untied = tiny_config(64)
    untied.tie_word_embeddings = False
    for reads_logits, trains in ((True, True), (False, False)):
        model = LlamaForCausalLM(untied)
        Parallel(model, reads_logits=reads_logits)
        assert model.lm_head.weight.requires_grad is trains
    tied = LlamaForCausalLM(tiny_config(64))
    Parallel(tied, reads_logits=False)  # the head is the input embedding, which trains
    assert tied.lm_head.weight.requires_grad
