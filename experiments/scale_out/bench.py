"""Scale-out costs of a GRACE step on the packaged SmolLM2: the all-gather's share, memory per rank under FSDP2.

One run trains ``--steps`` GRACE steps (supervised chatterbot triplets, contrastive reward, short rationales)
and reports, per rank:

* ``state_mb``: bytes this rank holds of parameters, gradients and AdamW state after a step (local shards
  under FSDP2: sharding must halve it on 2 ranks);
* ``peak_rss_mb``: the process's peak resident memory during the steps (Linux ``VmHWM``, reset once the
  model is loaded, so the full-model load every rank does first is not counted; it includes Python, torch
  and the unsharded model during the rollout);
* ``gather_ms``: one gather of the step's pooled embeddings and labels (``SharedRollout.gather``, the only
  communication of the reward), timed alone after a barrier, mean of 20; and its share of the step;
* ``step_s``: mean step time (2 CPU cores shared by both ranks, and by other work on this machine).

    python experiments/scale_out/bench.py --compare          # 1 process, then 2 ranks under FSDP2 and DDP, one table
    python -m torch.distributed.run --nproc_per_node=2 experiments/scale_out/bench.py --strategy fsdp   # one layout
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [
    "model=smollm2-135m", "mode=supervised", "reward=contrastive", "logger=none", "logger.progress_bar=false",
    "report.enabled=false", "trainer.batch_size=2", "trainer.micro_batch_size=8", "trainer.save_every=1000",
    "rollout.num_samples=2", "rollout.max_new_tokens=16", "embedding.max_prompt_tokens=256", "data.on_error=skip",
]  # fmt: skip


def _state_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (local shards of DTensors)."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in module.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(local(v).numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def run(strategy: str, steps: int) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import grace.objectives.policy_gradient.global_batch as shared_rollout
    import grace.objectives.policy_gradient.step as policy_gradient
    from grace.cli.train import CONF_DIR
    from grace.distributed.ranks import barrier, init_from_env, is_main
    from grace.training.trainer import train

    layout = init_from_env()
    torch.set_num_threads(max(1, 2 // layout.size))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_object(compose("train", [*SETTINGS, f"trainer.max_steps={steps}", f"trainer.strategy={strategy}"]))
    measured: dict = {"state_mb": [], "gather_ms": []}
    step_of = policy_gradient.PolicyGradient.step
    gather_of = shared_rollout.SharedRollout.gather

    def gather(batch, rows, texts):
        barrier()  # time the collective alone, not the wait for the slower rank's rollout
        started = time.perf_counter()
        for _ in range(20):
            shared = gather_of(batch, rows, texts)
        measured["gather_ms"].append((time.perf_counter() - started) / 20 * 1000)
        return shared

    def step(self, number, examples, optimizer, scheduler):
        if number == 1:
            _reset_peak_rss()
        result = step_of(self, number, examples, optimizer, scheduler)
        measured["state_mb"].append(_state_bytes(self.context.parallel.module, optimizer) / 2**20)
        return result

    policy_gradient.PolicyGradient.step = step
    shared_rollout.SharedRollout.gather = staticmethod(gather)
    output = Path(tempfile.mkdtemp(prefix="scale-out-"))
    started = time.perf_counter()
    train(cfg, output)
    elapsed = time.perf_counter() - started
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()] if is_main() else []
    return {
        "strategy": strategy if layout.size > 1 else "one process",
        "ranks": layout.size,
        "rank": layout.rank,
        "state_mb": round(measured["state_mb"][-1], 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "gather_ms": round(sum(measured["gather_ms"][1:]) / max(len(measured["gather_ms"]) - 1, 1), 3),
        "step_s": round(sum(r["time/step_seconds"] for r in rows[1:]) / max(len(rows) - 1, 1), 2) if rows else None,
        "wall_s": round(elapsed, 1),
    }


def compare(steps: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    layouts = [
        [sys.executable, __file__],
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__, "--strategy", "fsdp"],
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__, "--strategy", "ddp"],
    ]
    results = []
    for command in layouts:
        done = subprocess.run([*command, "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
        results += [json.loads(line.removeprefix("RESULT ")) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    base = next(r for r in results if r["ranks"] == 1)
    print("| layout | rank | state MB (ratio) | peak RSS MB (ratio) | gather ms | step s | gather share |")
    print("|---|---|---|---|---|---|---|")
    steps_by_layout = {r["strategy"]: r["step_s"] for r in results if r["step_s"] is not None}
    for r in results:
        step = steps_by_layout[r["strategy"]]
        share = f"{r['gather_ms'] / 1000 / step:.4%}" if r["ranks"] > 1 else "-"
        print(
            f"| {r['strategy']} ({r['ranks']}) | {r['rank']} | {r['state_mb']} ({r['state_mb'] / base['state_mb']:.2f}) "
            f"| {r['peak_rss_mb']} ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}) | {r['gather_ms'] if r['ranks'] > 1 else '-'} "
            f"| {step} | {share} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="fsdp", choices=["ddp", "fsdp"])
    parser.add_argument("--steps", type=int, default=3, help="GRACE steps; the first is a warm-up for the timings")
    parser.add_argument("--compare", action="store_true", help="run 1 process, 2 ranks FSDP2 and 2 ranks DDP; print a table")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    if args.compare:
        compare(args.steps)
    else:
        print("RESULT " + json.dumps(run(args.strategy, args.steps)), flush=True)


if __name__ == "__main__":
    main()
