"""Training on two gloo ranks (DDP, FSDP2), spawned as torchrun would, against one process on the same
global batch and seed: the same rewards and advantages per example, metrics and weights; a rank whose
rationales all end at once does not hang the other; runs resume across world sizes; grace-train under
torchrun shares one run directory.

The tiny model never writes EOS by itself; an EOS bias on its LM head (``distributed_helpers.eos_bias``)
makes rationales end at random lengths, so paper-variant rewards vary, some advantages are zero and the
ranks hold different numbers of micro-batches (``grace.distributed.parallel`` equalises them). The spawned runs are
combined, one spawn per test, to keep the suite's cost down: starting the processes costs more than a run.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_helpers import eos_bias, run_ranks
from safetensors.torch import load_file
from train_helpers import compose_config, read_metrics, without_timing

import grace.objectives.policy_gradient.step as policy_gradient
import grace.training.trainer
from grace.distributed.ranks import init_from_env

EOS_BIAS = 9.5  # p(EOS) ~ 0.2 per token over the 49k vocabulary: rationales of 1..8 tokens, some truncated
# Rollouts one row at a time through the plain loop: a row's rationale is then computed with the same shapes
# however the batch is split over ranks. Batched decoding changes logits by ~1e-7 with the batch's
# composition (grace/generation/sampling.py), enough to swap near-tied tokens of a random model's flat distribution.
# A small learning rate: AdamW's first updates are +-lr whatever a gradient's size, so on weights whose
# gradient is nearly zero the ~1e-7 noise of summing in another order can move the update by a share of lr
# (the gradient norm, compared within 1e-5 among the metrics, catches a wrongly scaled gradient).
LAYOUT = [
    "trainer.batch_size=4", "trainer.mini_batch_size=2", "trainer.micro_batch_size=2", "trainer.save_every=2",
    "trainer.lr=1e-5", "rollout.batch_size=1", "generation.shared_prefix=false", "generation.continuous=false",
]  # fmt: skip
CASES = {
    "supervised-contrastive": ["mode=supervised", "reward=contrastive"],
    "supervised-paper": ["mode=supervised", "reward=paper", "rollout.num_samples=3"],
    "unsupervised-contrastive": ["mode=unsupervised", "reward=contrastive", "algorithm.embedding_loss_coef=0.5"],
    "unsupervised-paper": ["mode=unsupervised", "reward=paper", "algorithm=rloo"],
    # LoRA adapters, with the KL reference being the base with the adapter switched off.
    "lora-kl": ["model.lora.r=4", "algorithm.kl_coef=0.1"],
    # The baselines' InfoNCE over the whole update's candidates: in one forward, and with the gradient cache.
    "contrastive-objective": ["objective=contrastive", "trainer.micro_batch_size=16"],
    "contrastive-objective-cached": ["objective=contrastive"],
    # Reward components that read the rationales' token ids and texts over the gathered global batch, the
    # held-out set scored on every rank (under FSDP inside the gathered rollout), the guards watching.
    "components-heldout": [
        "mode=supervised", "reward=contrastive", "+reward.components.length={weight: 0.1, cap: 0.5, params: {budget: 3}}",
        "+reward.components.degenerate={weight: 0.5}", "trainer.eval_every=1", "trainer.heldout.size=2",
    ],
    # GDPO per-component advantages, Dr. GRPO's constant normaliser, truncated importance sampling with the
    # old log-probs recomputed (two updates per step), documents embedded as plain text.
    "policy-options": [
        "mode=supervised", "reward=contrastive", "algorithm.normalize=per_component", "algorithm.aggregation=constant",
        "algorithm.rollout_correction=token", "+reward.components.length={weight: 0.1, cap: 0.5, params: {budget: 3}}",
        "embedding.rationales=queries",
    ],
    # Supervised fine-tuning on demonstrations: the token-mean NLL normalised over every rank's tokens.
    "sft": ["objective=sft", "data.train_file={root}/demos.jsonl"],
}
# (strategy, case, settings that change how, not what, is computed): each strategy meets both modes and
# both reward variants, every case runs under at least one strategy, gradient checkpointing under both.
SPREAD = [
    ("ddp", "supervised-contrastive", []),
    ("ddp", "unsupervised-paper", []),
    ("ddp", "lora-kl", ["model.gradient_checkpointing=true"]),
    ("ddp", "contrastive-objective-cached", []),
    ("ddp", "sft", []),
    ("ddp", "policy-options", []),
    ("fsdp", "components-heldout", []),
    ("fsdp", "supervised-paper", ["model.gradient_checkpointing=true"]),
    ("fsdp", "unsupervised-contrastive", []),
    ("fsdp", "lora-kl", []),
    ("fsdp", "contrastive-objective", []),
]
# bf16 autocast with everything else on, one step: trained, finite, saved.
BF16 = {
    "ddp": [*CASES["lora-kl"], "model.gradient_checkpointing=true", "trainer.precision=bf16", "trainer.max_steps=1"],
    "fsdp": ["algorithm.kl_coef=0.1", "model.gradient_checkpointing=true", "trainer.precision=bf16", "trainer.max_steps=1"],
}
RESUMED = "supervised-paper"
RECORDS: list[dict[str, torch.Tensor]] = []  # rewards and advantages of every step, as compute_advantages saw them
_ORIGINAL = {"load_policy": grace.training.trainer.load_policy, "compute_advantages": policy_gradient.compute_advantages}


def _instrument(bias: float = EOS_BIAS) -> None:
    """An EOS bias on every model the trainer loads, and a record of the rewards and advantages."""

    def biased(*args, **kwargs):
        model, tokenizer = _ORIGINAL["load_policy"](*args, **kwargs)
        eos_bias(model, tokenizer.eos_token_id, bias)
        return model, tokenizer

    def recorded(rewards, key, mask, **kwargs):
        advantages = _ORIGINAL["compute_advantages"](rewards, key, mask, **kwargs)
        RECORDS.append({"rewards": rewards.clone(), "advantages": advantages.clone()})
        return advantages

    grace.training.trainer.load_policy = biased
    policy_gradient.compute_advantages = recorded


def _run(overrides: list[str], output_dir: Path) -> None:
    RECORDS.clear()
    overrides = [o.replace("{root}", str(output_dir.parent)) for o in overrides]
    grace.training.trainer.train(compose_config(*LAYOUT, *overrides), output_dir)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(list(RECORDS), output_dir / f"records-rank{rank}.pt")


def _on_two_ranks(root: Path) -> None:
    """Everything the tests below run on two ranks, in one spawn (starting the processes costs more than a run)."""
    rank = init_from_env().rank
    _instrument()
    for strategy, case, how in SPREAD:
        _run([*CASES[case], *how, f"trainer.strategy={strategy}"], root / f"{strategy}-{case}")
    for strategy, overrides in BF16.items():
        _run([*overrides, f"trainer.strategy={strategy}"], root / f"{strategy}-bf16")
    # The second half of a run that one process started.
    _run([*CASES[RESUMED], "trainer.strategy=fsdp", "trainer.max_steps=4", "trainer.resume=auto"], root / "one-then-two")
    # Rank 0 writes EOS first, every time; rank 1 never does: rank 0 stops decoding long before rank 1.
    _instrument(bias=1e4 if rank == 0 else 0.0)
    engines = {"continuous": ["generation.shared_prefix=true", "generation.continuous=true"], "plain": []}
    for engine, options in engines.items():
        _run(["trainer.strategy=fsdp", "trainer.max_steps=1", "rollout.batch_size=64", *options], root / f"eos-first-{engine}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case in one process, then on two ranks; a run resumed from one process on two ranks and one
    resumed from two ranks in one process."""
    root = tmp_path_factory.mktemp("scale_out")
    demos = [{"text": f"Text number {i}.", "rationale": f"Reason {i}."} for i in range(6)]
    (root / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    _instrument()
    try:
        for case in CASES:
            _run(CASES[case], root / f"single-{case}")
        _run([*CASES[RESUMED], "trainer.max_steps=4"], root / "straight")
        shutil.copytree(root / f"single-{RESUMED}", root / "one-then-two")
        run_ranks(_on_two_ranks, root, timeout=900)
        shutil.copytree(root / f"fsdp-{RESUMED}", root / "two-then-one")
        _run([*CASES[RESUMED], "trainer.max_steps=4", "trainer.resume=auto"], root / "two-then-one")
    finally:
        grace.training.trainer.load_policy = _ORIGINAL["load_policy"]
        policy_gradient.compute_advantages = _ORIGINAL["compute_advantages"]
    return root


def assert_same_metrics(one: list[dict], two: list[dict]) -> None:
    one, two = without_timing(one), without_timing(two)
    assert [row.keys() for row in one] == [row.keys() for row in two]
    for a, b in zip(one, two):
        for key in a:
            assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-5), (a["step"], key, a[key], b[key])  # perplexity is large


@pytest.mark.parametrize("strategy, case", [(strategy, case) for strategy, case, _ in SPREAD])
def test_two_ranks_train_as_one_process_on_the_same_global_batch(runs, strategy, case):
    single, spread = runs / f"single-{case}", runs / f"{strategy}-{case}"
    assert_same_metrics(read_metrics(single), read_metrics(spread))
    single_weights = load_file(single / "checkpoints" / "step-2" / "model.safetensors")
    spread_weights = load_file(spread / "checkpoints" / "step-2" / "model.safetensors")
    assert single_weights.keys() == spread_weights.keys()
    worst = max(float((single_weights[k] - spread_weights[k]).abs().max()) for k in single_weights)
    assert worst < 1e-5, worst
    expected = torch.load(single / "records-rank0.pt")
    for rank in (0, 1):  # every rank computed the global batch's rewards and advantages
        got = torch.load(spread / f"records-rank{rank}.pt")
        assert len(got) == len(expected)
        for step_expected, step_got in zip(expected, got):
            for name in ("rewards", "advantages"):
                assert torch.allclose(step_expected[name], step_got[name], atol=1e-5), (rank, name)


def test_the_compared_runs_are_not_trivial(runs):
    """The comparisons above can fail: rationales end at different lengths, some advantages are zero (so the
    ranks run different numbers of micro-batches), and training moves the weights."""
    metrics = read_metrics(runs / f"single-{RESUMED}")
    assert 0 < metrics[0]["rollout/truncation_rate"] < 1
    # Rows with zero advantage are not forwarded: in some update the ranks hold different numbers of rows
    # (examples 0 and 2 on rank 0, 1 and 3 on rank 1; updates of 2 examples; micro-batches of 2 rows).
    advantages = torch.load(runs / "single-supervised-contrastive" / "records-rank0.pt")[0]["advantages"]
    forwarded = (advantages != 0).view(4, -1).sum(dim=1)  # per example
    micro_batches = (forwarded + 1) // 2
    assert micro_batches[0] != micro_batches[1] or micro_batches[2] != micro_batches[3], forwarded
    base = _ORIGINAL["load_policy"]("tiny-random")[0].state_dict()
    for case in ("supervised-paper", "lora-kl"):
        trained = load_file(runs / f"fsdp-{case}" / "checkpoints" / "step-2" / "model.safetensors")
        assert any(not torch.equal(base[k], trained[k]) for k in trained), case
    assert (runs / "fsdp-lora-kl" / "checkpoints" / "step-2" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("strategy", list(BF16))
def test_bf16_with_gradient_checkpointing_trains_under_every_strategy(runs, strategy):
    for row in read_metrics(runs / f"{strategy}-bf16"):
        assert math.isfinite(row["loss/policy"]) and row["optim/grad_norm"] > 0 and math.isfinite(row["optim/grad_norm"])
    assert (runs / f"{strategy}-bf16" / "checkpoints" / "step-1" / "model.safetensors").is_file()


def test_a_run_resumes_on_another_world_size_as_if_uninterrupted(runs):
    straight = read_metrics(runs / "straight")
    for split in ("one-then-two", "two-then-one"):
        resumed = read_metrics(runs / split)
        assert [row["step"] for row in resumed] == [1, 2, 3, 4]
        assert_same_metrics(straight, resumed)


@pytest.mark.parametrize("engine", ["continuous", "plain"])
def test_a_rank_whose_rationales_all_end_at_once_does_not_hang_the_other_under_fsdp(runs, engine):
    """The spawn above finished (run_ranks fails a run that hangs), and each rank decoded as it should."""
    [metrics] = read_metrics(runs / f"eos-first-{engine}")
    # Rank 0's rationales are its EOS alone; rank 1's run to the limit of 8 tokens.
    assert metrics["rollout/truncation_rate"] == 0.5
    assert metrics["rollout/rationale_length_max"] == 8
    assert metrics["rollout/rationale_length_mean"] == (1 + 8) / 2


# ---------------------------------------------------------------------- the command line under torchrun


def test_grace_train_under_torchrun_shares_one_run_directory(tmp_path):
    """No output directory given: Hydra's timestamped directory is rank 0's, shared by both ranks; rank 0
    alone writes the metrics and Hydra's config, rank 1 logs to its own file."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        "-m", "grace.cli.train", "experiment=debug", "trainer.max_steps=1", "report.enabled=false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = [p.parent for p in (tmp_path / "outputs").glob("*/*/metrics.jsonl")]
    assert [row["step"] for row in read_metrics(run)] == [1]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train_rank1.log").is_file()
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1
    assert done.stdout.count("== grace-train:") == 1  # one summary, rank 0's
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["rollout/rows"] == 2 * 3 * 2
