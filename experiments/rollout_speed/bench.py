"""Rollout cost of one GRACE step: our single pass against the two-pass way of the official code.

Three ways to get k rationales per text *and* their pooled embeddings, timed in one process on the same
prompts (a training step of ``experiment=cpu_small``: 2 chatterbot triplets x 3 roles x k samples):

* ``two-pass``   transformers' ``generate``, then a second forward over the finished sequences for the
                 last-layer hidden states, then pooling: what the official code does (it also runs a
                 third pass for the old log-probs, not counted here).
* ``one-pass``   ``grace.generation.reference.generate`` with ``share_prompts=False``: hidden states pooled while
                 generating, log-probs of the sampled tokens kept, no second forward.
* ``one-pass+shared-prompt``  the same, with the prompt pass run once per distinct text and its KV cache
                 copied to the k samples (the plain loop's default).
* ``engine``     ``grace.generation.engine.generate_rows``, what the trainer uses now: the shared system-prompt prefix
                 run once, continuous batching (all rows here run to the limit, so it cannot refill early).

Every row generates exactly ``--new-tokens`` tokens (EOS is ignored) so the three do the same amount of
decoding. Figures are medians over ``--repeats`` runs after one warm-up, printed as ratios to ``two-pass``.

    .venv/bin/python experiments/rollout_speed/bench.py                      # packaged SmolLM2, k=4, 32 tokens
    .venv/bin/python experiments/rollout_speed/bench.py --k 8 --new-tokens 64
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from grace.data import chatterbot_triplets
from grace.generation.engine import generate_rows
from grace.generation.reference import RowSampling, generate
from grace.model.forward import model_device, position_ids
from grace.model.loading import load_policy
from grace.model.pooling import pool_hidden
from grace.model.prompts import PromptBatch, PromptTemplate, Span, render_prompt
from grace.model.sources import PACKAGED_SMOLLM2
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT


def two_pass(model, prompts: PromptBatch, new_tokens: int, seed: int) -> torch.Tensor:
    """transformers' generate, then a full forward over prompt + rationale for the hidden states: [B, H]."""
    torch.manual_seed(seed)
    with torch.no_grad():
        sequences = model.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )
        mask = torch.cat([prompts.attention_mask, torch.ones_like(sequences[:, prompts.input_ids.shape[1] :])], dim=1)
        hidden = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
        rationale = torch.full_like(sequences[:, prompts.input_ids.shape[1] :], int(Span.RATIONALE))
        spans = torch.cat([prompts.spans, rationale], dim=1)
        return pool_hidden(hidden.hidden_states[-1], spans, "after_system")


def sampling(rows: int, new_tokens: int, seed: int) -> RowSampling:
    """Every row sampled at T=1 for exactly ``new_tokens`` tokens (no token ends a row early)."""
    return RowSampling(
        temperature=torch.ones(rows),
        top_p=torch.ones(rows),
        max_new_tokens=torch.full((rows,), new_tokens),
        seeds=[seed * 1000 + i for i in range(rows)],
        eos_ids=[-1],
        pad_id=0,
    )


def one_pass(model, prompts: PromptBatch, new_tokens: int, seed: int, share_prompts: bool) -> torch.Tensor:
    rows = sampling(prompts.input_ids.shape[0], new_tokens, seed)
    return generate(model, prompts, rows, pooling="after_system", share_prompts=share_prompts).embeddings


def engine(model, prompts: list, new_tokens: int, seed: int) -> torch.Tensor:
    rows = sampling(len(prompts), new_tokens, seed)
    return generate_rows(model, prompts, rows, pooling="after_system", slots=len(prompts)).embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PACKAGED_SMOLLM2)
    parser.add_argument("--examples", type=int, default=2, help="triplets per step (3 texts each)")
    parser.add_argument("--k", type=int, default=4, help="rationales per text")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_policy(args.model)
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    texts = [t for triplet in chatterbot_triplets("train")[: args.examples] for t in (triplet.query, triplet.positive, triplet.negative)]
    rendered = [render_prompt(tokenizer, t, template, 256) for t in texts for _ in range(args.k)]
    prompts = PromptBatch.collate(rendered, tokenizer.pad_token_id)
    rows, width = prompts.input_ids.shape
    print(
        f"model {args.model} on {model_device(model)}, {args.threads} threads: {len(texts)} texts x k={args.k} = {rows} rows, "
        f"prompt width {width}, {args.new_tokens} new tokens each"
    )

    methods = {
        "two-pass": lambda seed: two_pass(model, prompts, args.new_tokens, seed),
        "one-pass": lambda seed: one_pass(model, prompts, args.new_tokens, seed, share_prompts=False),
        "one-pass+shared-prompt": lambda seed: one_pass(model, prompts, args.new_tokens, seed, share_prompts=True),
        "engine": lambda seed: engine(model, rendered, args.new_tokens, seed),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        for name, run in methods.items():  # interleaved, so a burst of load elsewhere hits all three
            started = time.perf_counter()
            run(repeat)
            if repeat:
                times[name].append(time.perf_counter() - started)

    baseline = statistics.median(times["two-pass"])
    print(f"{'method':<24} {'median s':>9} {'tokens/s':>9} {'vs two-pass':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:>9.2f} {rows * args.new_tokens / median:>9.1f} {baseline / median:>11.2f}x")


if __name__ == "__main__":
    main()
