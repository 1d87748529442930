"""A GRACE step on a shared machine: idle vs beside one competing CPU job, with and without the passive
OpenMP wait policy that ``import grace`` now sets (grace/distributed/threads.py).

Each configuration is one fresh ``grace-train`` process running the quality study's setting
(``experiment=quality_grace_embedding``: the packaged SmolLM2, 2 triples x 3 roles x 4 samples = 24
rationales of at most 32 tokens, GRPO + the embedding loss), stopped as soon as its first step is logged
(the checkpoint it would write next is ~1.6 GB and measures the disk, not the step). Figures are that step's
``time/step_seconds`` and ``time/rollout_seconds`` from ``metrics.jsonl``.

* ``passive``: the product as shipped: ``OMP_WAIT_POLICY`` unset, ``import grace`` sets PASSIVE before
  torch loads.
* ``libgomp default``: the behaviour before the change: torch is imported before grace, so libgomp has
  read its (unset) policy already and threads spin a while before they sleep.
* ``competing job``: another process running float32 matrix products on every core, as another
  training job would, for the whole of the measured run.

    OMP_WAIT_POLICY=PASSIVE python experiments/contention/bench.py            # all four, ~10 minutes
    python experiments/contention/bench.py --only passive --load busy         # one
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "experiment=quality_grace_embedding",
    "trainer.max_steps=1",
    "report.enabled=false",
    "logger.progress_bar=false",
]
# libgomp reads OMP_WAIT_POLICY when torch loads it: importing torch first makes grace's default too late.
PRELUDE = {
    "passive": "import sys; from grace.cli.train import main",
    "libgomp default": "import sys, torch; from grace.cli.train import main",
}
COMPETITOR = (
    "import torch, time\n"
    "a = torch.randn(1024, 1024)\n"
    "while True:\n"
    "    a = torch.nn.functional.normalize(a @ a, dim=1)\n"
)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false")
    return env


def first_step(policy: str, workdir: Path, timeout: float) -> dict:
    """Run one configuration until its first step is logged; its timings (or the time it was given)."""
    output = workdir / "run"
    code = f"{PRELUDE[policy]}; sys.argv = ['grace-train'] + sys.argv[1:]; main()"
    command = [sys.executable, "-c", code, *OVERRIDES, f"trainer.output_dir={output}", f"hydra.run.dir={workdir / 'hydra'}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = output / "metrics.jsonl"
    row = None
    try:
        while time.perf_counter() - started < timeout:
            if metrics.is_file():
                lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                steps = [line for line in lines if line.get("step") == 1]
                if steps:
                    row = steps[0]
                    break
            if process.poll() is not None:
                raise RuntimeError(f"grace-train ended with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
            time.sleep(1.0)
    finally:
        process.kill()
        process.wait()
    if row is None:
        return {"step_seconds": None, "rollout_seconds": None, "timeout": timeout}
    return {"step_seconds": row["time/step_seconds"], "rollout_seconds": row.get("time/rollout_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(PRELUDE), default=list(PRELUDE))
    parser.add_argument("--load", nargs="*", choices=["idle", "busy"], default=["idle", "busy"])
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds a configuration may take to log its first step")
    args = parser.parse_args()
    results = []
    for load in args.load:
        for policy in args.only:
            workdir = Path(tempfile.mkdtemp(prefix="contention-"))
            competitor = None
            if load == "busy":
                env = child_env() | {"OMP_WAIT_POLICY": "PASSIVE"}  # it computes all the time: its policy hardly matters
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
            try:
                load_before = os.getloadavg()[0]
                timing = first_step(policy, workdir, args.timeout)
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
                shutil.rmtree(workdir, ignore_errors=True)
            load_after = os.getloadavg()[0]  # the machine is shared: what else ran shows here
            results.append({"load": load, "policy": policy, "loadavg_1min_before": round(load_before, 2),
                            "loadavg_1min_after": round(load_after, 2), **timing})
            print(json.dumps(results[-1]), flush=True)
    print("\n| machine | OpenMP wait policy | first step, s | rollout, s | load average before / after |\n|---|---|---:|---:|---|")
    for r in results:
        step = f">{r['timeout']:.0f}" if r["step_seconds"] is None else f"{r['step_seconds']:.1f}"
        rollout = "-" if r["rollout_seconds"] is None else f"{r['rollout_seconds']:.1f}"
        print(f"| {r['load']} | {r['policy']} | {step} | {rollout} | {r['loadavg_1min_before']} / {r['loadavg_1min_after']} |")


if __name__ == "__main__":
    main()
