"""A GPU check of the CUDA paths that have not run yet: a bf16 GRACE step, eager against compiled decoding, peak memory.

Builds a model of SmolLM2-135M's shape (or a 1.5B-parameter shape, or a tiny one) with random weights from its
config, plus SmolLM2's tokenizer saved beside this script (3.4 MB), so it needs no download and no large file:
only the working tree reaches the GPU machine. Random weights rarely emit EOS, so every rationale runs to its
limit: a fixed workload. Prints one block per check; ``--json`` also writes them to a file.

    python experiments/gpu_check/gpu_check.py                      # CUDA: SmolLM2 shape, then 1.5B for one step
    python experiments/gpu_check/gpu_check.py --shape tiny --no-compile --skip-large   # CPU, seconds (the fast test)
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from grace.config import TrainConfig
from grace.data import Triplet
from grace.data.roles import Role
from grace.generation.options import GenerationOptions
from grace.generation.rollout import RoleSampling, RolloutRequest, expand_requests, rollout
from grace.model.prompts import PromptTemplate
from grace.objectives.base import TrainContext
from grace.objectives.optimizer import make_scheduler
from grace.objectives.policy_gradient.step import PolicyGradient

HERE = Path(__file__).resolve().parent
# SmolLM2-135M-Instruct's LlamaConfig (DESIGN.md section 3); a Qwen2.5-1.5B-like shape with SmolLM2's vocabulary;
# and a tiny one for CPU.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
}
TRIPLETS = [
    Triplet("What is the capital of France?", "Paris is the capital of France.", "Bananas are rich in potassium."),
    Triplet("Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", "The train leaves at noon."),
    Triplet("How do plants make food?", "Plants make sugar from light by photosynthesis.", "The match ended in a draw."),
    Triplet("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level.", "She painted the fence."),
]


def build_model(shape: str, tokenizer, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(
        **SHAPES[shape], vocab_size=len(tokenizer), tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device).eval()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


def training_step(model, tokenizer, device: torch.device, precision: str, tokens: int, samples: int) -> dict[str, float]:
    """One GRACE step (rollout, reward, update) through the objective the trainer runs; its logged metrics."""
    cfg = TrainConfig()
    cfg.trainer = replace(cfg.trainer, batch_size=len(TRIPLETS), micro_batch_size=8, precision=precision, lr=1e-6)
    cfg.rollout = replace(cfg.rollout, num_samples=samples, max_new_tokens=tokens, batch_size=64)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = PromptTemplate.build(tokenizer, cfg.embedding.system_prompt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    objective = PolicyGradient(TrainContext(cfg, model, tokenizer, template, device, autocast))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, objective.updates_per_step())
    _sync(device)
    started = time.perf_counter()
    result = objective.step(1, TRIPLETS, optimizer, scheduler)
    _sync(device)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["time/step_seconds"] = time.perf_counter() - started
    return metrics


def decoding_speed(model, tokenizer, device: torch.device, tokens: int, compiled: bool, rows: int) -> tuple[float, torch.Tensor]:
    """Generated tokens per second of one rollout of ``rows`` rationales (the second call, after warm-up), and its ids."""
    template = PromptTemplate.build(tokenizer, TrainConfig().embedding.system_prompt)
    requests = [RolloutRequest(t.query, g, Role.QUERY) for g, t in enumerate(TRIPLETS)]
    sampling = {Role.QUERY: RoleSampling(max(rows // len(TRIPLETS), 1), 1.0, 1.0, tokens)}
    seeds = list(range(len(expand_requests(requests, sampling))))
    options = GenerationOptions(compile=compiled)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    for attempt in range(2):  # the first call compiles (and warms caches up)
        _sync(device)
        started = time.perf_counter()
        with autocast:
            batch = rollout(model, tokenizer, template, requests, sampling, pooling="after_system", max_prompt_tokens=256, seeds=seeds, options=options)
        _sync(device)
        seconds = time.perf_counter() - started
    return float(batch.rationale_mask.sum()) / seconds, batch.rationale_ids


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(shape: str, device: torch.device, args, compile_check: bool) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(HERE / "tokenizer")
    model = build_model(shape, tokenizer, device)
    parameters = sum(p.numel() for p in model.parameters())
    out: dict[str, object] = {"shape": shape, "device": str(device), "parameters_millions": round(parameters / 1e6, 1)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    metrics = training_step(model, tokenizer, device, "bf16", args.tokens, args.samples)
    keep = ("rollout/logprob_mismatch", "rollout/importance_weight", "time/", "reward/total_", "loss/policy", "loss/ratio_max", "optim/grad_norm")
    out["bf16_step"] = {k: round(v, 6) for k, v in metrics.items() if k.startswith(keep)}
    out["peak_memory_gib"] = round(peak_memory_gib(device), 3)
    if compile_check:
        eager_speed, eager_ids = decoding_speed(model, tokenizer, device, args.tokens, False, args.rows)
        compiled_speed, compiled_ids = decoding_speed(model, tokenizer, device, args.tokens, True, args.rows)
        same = eager_ids.shape == compiled_ids.shape and bool(torch.equal(eager_ids, compiled_ids))
        agree = float((eager_ids == compiled_ids).float().mean()) if eager_ids.shape == compiled_ids.shape else 0.0
        out["decoding"] = {
            "eager_tokens_per_second": round(eager_speed, 1), "compiled_tokens_per_second": round(compiled_speed, 1),
            "same_tokens": same, "token_agreement": round(agree, 4),
        }  # fmt: skip
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default=None, help="default: smollm2 on CUDA, tiny on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tokens", type=int, default=None, help="rationale tokens (default: 128 on CUDA, 8 on CPU)")
    parser.add_argument("--samples", type=int, default=4, help="rationales per text and role")
    parser.add_argument("--rows", type=int, default=32, help="rationales decoded together in the speed check")
    parser.add_argument("--no-compile", action="store_true", help="skip eager vs compiled decoding")
    parser.add_argument("--skip-large", action="store_true", help="skip the one step at the 1.5B shape")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    args.shape = args.shape or ("smollm2" if device.type == "cuda" else "tiny")
    args.tokens = args.tokens or (128 if device.type == "cuda" else 8)
    results = [check(args.shape, device, args, compile_check=not args.no_compile)]
    print(json.dumps(results[-1], indent=2), flush=True)
    if not args.skip_large and args.shape != "1.5b":
        results.append(check("1.5b", device, args, compile_check=False))
        print(json.dumps(results[-1], indent=2), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
