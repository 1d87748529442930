"""Embedding throughput on a real workload: today's path, each engine option, and the two-pass reference.

Workload: the texts the offline MTEB suite (``grace/evaluation/tasks``) sends to an encoder, recorded by
running ``mteb.evaluate`` once with a recording encoder, so the calls, their order and their
de-duplication are exactly what the GRACE adapter receives; each call is embedded in chunks of 256
distinct texts, the adapter's chunk. ``--tasks`` picks tasks, ``--every n`` keeps every n-th text of
each call (a stated subset that keeps the suite's mix of short and long texts).

Configurations (all but ``two-pass`` embed through ``grace.embedding.pipeline.embed``, greedy):

* ``today``       engine options off: fixed batches through the plain loop (``grace.generation.reference.generate``,
                  transformers' ``DynamicCache``), i.e. the path before the engine existed
* ``prefix``      shared prompt prefix only (fixed batches)
* ``continuous``  continuous batching only (no shared prefix)
* ``engine``      both (the default), at the same batch size
* ``engine@N``    both at each of ``--big-batch`` slots (``--big-batch`` alone: none)
* ``compiled``    both + the compiled decode step (``--compile``; its compilation is excluded as warm-up)
* ``two-pass``    what the official evaluation does: transformers' ``generate``, then the rationale decoded
                  to text, re-tokenised after the prompt, and a second forward pass with every layer's
                  hidden states, pooled after the system block (rationale rows only; the second pass runs
                  the decoder without the LM head, which makes the reference cheaper than the original)

Every configuration embeds every chunk ``--repeats`` times, in one process, interleaved chunk by chunk
in rotating order so that load from other jobs on the machine hits all of them alike; a chunk's time is
its fastest repeat (what interference cannot make faster), a configuration's time the sum over chunks;
one warm-up call first. Printed: seconds, texts/s,
generated tokens/s and ratios against ``today`` and ``two-pass``; the largest embedding difference to
``today`` and the share of identical rationales. Peak memory: each configuration embeds the 2 x batch
longest texts of the workload (one chunk) in a subprocess of its own, which reports its resident-memory high-water
mark during that call (reset first, so model loading does not count) at the same batch size.

    .venv/bin/python experiments/throughput/bench.py --max-new-tokens 0 --tasks GraceWordSim353 GraceSimLex999
    .venv/bin/python experiments/throughput/bench.py --max-new-tokens 48 --every 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.evaluation.tasks import OFFLINE_SUITE
from grace.generation.options import GenerationOptions
from grace.model.forward import position_ids
from grace.model.loading import load_policy
from grace.model.pooling import pool_hidden
from grace.model.prompts import Prompt, PromptBatch, PromptTemplate, Span, render_prompt
from grace.model.sources import PACKAGED_SMOLLM2
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT

CHUNK = 256  # distinct texts per embed call: GraceMtebEncoder's default chunk_size
MAX_PROMPT_TOKENS = 1024  # the offline suite's setting (conf/eval/baselines.yaml)


# ----------------------------------------------------------------------------- the workload


def record_workload(tasks: list[str]) -> list[tuple[str, list[str]]]:
    """(task, distinct texts) for every encode call mteb makes on ``tasks``, in order."""
    import mteb
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder

    from grace.evaluation.tasks import get_tasks

    class Recorder(AbsEncoder):
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[str]]] = []
            self.mteb_model_meta = ModelMeta(
                loader=None, name="bench/recorder", revision="0", release_date=None, languages=None,
                n_parameters=None, memory_usage_mb=None, max_tokens=None, embed_dim=8, license=None,
                open_weights=None, public_training_code=None, public_training_data=None, framework=["PyTorch"],
                similarity_fn_name="cosine", use_instructions=False, training_datasets=None, modalities=["text"],
            )  # fmt: skip

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [text for batch in inputs for text in batch["text"]]
            self.calls.append((task_metadata.name, list(dict.fromkeys(texts))))  # the adapter de-duplicates
            return np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)

    recorder = Recorder()
    with tempfile.TemporaryDirectory() as results:
        mteb.evaluate(recorder, get_tasks(tasks), cache=mteb.ResultCache(results), overwrite_strategy="always", show_progress_bar=False)
    return recorder.calls


# ----------------------------------------------------------------------------- the configurations


@dataclass
class Config:
    name: str
    batch_size: int
    options: GenerationOptions | None  # None: the two-pass reference
    seconds: float = 0.0
    texts: int = 0
    tokens: int = 0
    max_difference: float = 0.0  # largest |embedding - today's|
    same_rationales: list[bool] = field(default_factory=list)
    peak_mib: float | None = None


def configurations(args: argparse.Namespace) -> list[Config]:
    b = args.batch_size
    configs = [
        Config("today", b, GenerationOptions(shared_prefix=False, continuous=False)),
        Config("prefix", b, GenerationOptions(shared_prefix=True, continuous=False)),
        Config("continuous", b, GenerationOptions(shared_prefix=False, continuous=True)),
        Config("engine", b, GenerationOptions()),
    ]
    configs += [Config(f"engine@{n}", n, GenerationOptions()) for n in args.big_batch if n != b]
    if args.compile:
        configs.append(Config("compiled", b, GenerationOptions(compile=True)))
    if args.max_new_tokens and args.two_pass:
        configs.append(Config("two-pass", b, None))
    return [c for c in configs if c.name == "today" or not args.only or c.name in args.only]


def embedding_config(max_new_tokens: int) -> EmbeddingConfig:
    return EmbeddingConfig(
        rationale=max_new_tokens > 0,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        decoding=Decoding(max_new_tokens=max(max_new_tokens, 1)),
    )


def run_config(model, tokenizer, template, config: Config, texts: list[str], max_new_tokens: int):
    """(embeddings [N, H], rationales [N], generated tokens) of one chunk, embedded as ``config`` says."""
    if config.options is None:
        return two_pass(model, tokenizer, template, texts, max_new_tokens, config.batch_size)
    out = embed(
        model, tokenizer, texts, embedding_config(max_new_tokens),
        batch_size=config.batch_size, template=template, options=config.options,
    )  # fmt: skip
    return out.embeddings, out.rationales, int(out.rationale_lengths.sum())


@torch.no_grad()
def two_pass(model, tokenizer, template, texts: list[str], max_new_tokens: int, batch_size: int):
    """transformers' generate, then decode -> re-tokenise -> a second forward with all hidden states."""
    prompts = [render_prompt(tokenizer, text, template, MAX_PROMPT_TOKENS) for text in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(prompts[i].ids))
    embeddings = torch.zeros(len(texts), model.config.hidden_size)
    rationales, tokens = [""] * len(texts), 0
    for start in range(0, len(texts), batch_size):
        index = order[start : start + batch_size]
        batch = PromptBatch.collate([prompts[i] for i in index], tokenizer.pad_token_id)
        sequences = model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        generated = sequences[:, batch.input_ids.shape[1] :]
        ended = generated == tokenizer.eos_token_id  # a row's tokens: up to its first EOS, included
        tokens += int(torch.where(ended.any(dim=1), ended.int().argmax(dim=1) + 1, generated.shape[1]).sum())
        decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
        again = []
        for i, text in zip(index, decoded):
            rationales[i] = text
            ids = tokenizer.encode(text, add_special_tokens=False)
            again.append(Prompt(prompts[i].ids + ids, prompts[i].spans + [int(Span.RATIONALE)] * len(ids), False))
        full = PromptBatch.collate(again, tokenizer.pad_token_id)
        mask = full.attention_mask
        # The decoder only: the official code calls the whole model, whose [B, T, V] logits (6.7 GB for a batch of
        # 32 newsgroup posts) this machine cannot hold; without them the reference is cheaper than the original.
        output = model.get_decoder()(
            input_ids=full.input_ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True
        )
        embeddings[index] = pool_hidden(output.hidden_states[-1], full.spans, "after_system")
    return embeddings, rationales, tokens


# ----------------------------------------------------------------------------- peak memory


def peak_memory_child(args: argparse.Namespace) -> None:
    """In a subprocess: embed the memory workload with one configuration; print the RSS high-water mark."""
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args.model)
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    config = next(c for c in configurations(args) if c.name == args.memory_child)
    texts = json.loads(Path(args.texts_file).read_text())
    run_config(model, tokenizer, template, config, texts[:4], args.max_new_tokens)  # warm-up (and compilation)
    before = _rss_mib()
    reset = _reset_peak_rss()
    run_config(model, tokenizer, template, config, texts[:CHUNK], args.max_new_tokens)
    peak = _peak_rss_mib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak - before}))


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0), so model loading does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def _peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def _status_kib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def measure_peaks(args: argparse.Namespace, configs: list[Config], texts: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
    try:
        for config in configs:
            command = [sys.executable, __file__, *sys.argv[1:], "--memory-child", config.name, "--texts-file", handle.name]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode:
                print(f"peak memory of {config.name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            config.peak_mib = json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]
    finally:
        os.unlink(handle.name)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PACKAGED_SMOLLM2)
    parser.add_argument("--tasks", nargs="+", default=list(OFFLINE_SUITE))
    parser.add_argument("--every", type=int, default=1, help="keep every n-th text of each call")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each chunk per configuration (fastest counts)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="greedy rationale limit; 0 = no rationale")
    parser.add_argument("--batch-size", type=int, default=32, help="today's batch (conf/eval/baselines.yaml)")
    parser.add_argument("--big-batch", type=int, nargs="*", default=[64, 128], help="slots of the engine@N rows")
    parser.add_argument("--compile", action="store_true", help="add the compiled decode step (compiles for minutes on a CPU)")
    parser.add_argument("--no-two-pass", dest="two_pass", action="store_false")
    parser.add_argument("--only", nargs="+", help="run only these configurations (and today)")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return peak_memory_child(args)

    torch.set_num_threads(args.threads)
    calls = [(task, texts[:: args.every]) for task, texts in record_workload(args.tasks)]
    model, tokenizer = load_policy(args.model)
    template = PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)
    configs = configurations(args)
    total = sum(len(t) for _, t in calls)
    print(
        f"model {args.model}, {args.threads} threads, torch {torch.__version__}, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; workload: {total} texts in {len(calls)} calls of "
        f"{', '.join(dict.fromkeys(t for t, _ in calls))} (every {args.every}); "
        + (f"greedy rationales of at most {args.max_new_tokens} tokens" if args.max_new_tokens else "no rationale"),
        flush=True,
    )
    warm = calls[0][1][:4]
    for config in configs:  # first-call costs (and compilation) out of the timing
        started = time.perf_counter()
        run_config(model, tokenizer, template, config, warm, args.max_new_tokens)
        if config.options is not None and config.options.compile:
            print(f"  {config.name}: warm-up (compilation) {time.perf_counter() - started:.0f}s", flush=True)

    per_task: dict[str, dict[str, float]] = {}
    rotation = 0
    for task, call in calls:
        for start in range(0, len(call), CHUNK):
            texts = call[start : start + CHUNK]
            fastest: dict[str, float] = {}
            results: dict[str, tuple] = {}
            for config in configs:  # a compiled step compiles once per cache shape: not part of the timing
                if config.options is not None and config.options.compile:
                    run_config(model, tokenizer, template, config, [max(texts, key=len)], args.max_new_tokens)
            for _ in range(args.repeats):
                rotation += 1
                for config in configs[rotation % len(configs) :] + configs[: rotation % len(configs)]:
                    started = time.perf_counter()
                    result = run_config(model, tokenizer, template, config, texts, args.max_new_tokens)
                    fastest[config.name] = min(fastest.get(config.name, float("inf")), time.perf_counter() - started)
                    results.setdefault(config.name, result)
            reference = results["today"]
            for config in configs:
                embeddings, rationales, tokens = results[config.name]
                config.seconds += fastest[config.name]
                config.texts += len(texts)
                config.tokens += tokens
                task_seconds = per_task.setdefault(task, {})
                task_seconds[config.name] = task_seconds.get(config.name, 0.0) + fastest[config.name]
                if config.name != "today" and config.options is not None:
                    config.max_difference = max(config.max_difference, float((embeddings - reference[0]).abs().max()))
                    config.same_rationales.extend(a == b for a, b in zip(rationales, reference[1]))
        print(f"  {task}: {len(call)} texts: " + ", ".join(f"{n} {s:.1f}s" for n, s in per_task[task].items()), flush=True)

    if args.memory:
        longest = sorted({t for _, texts in calls for t in texts}, key=len, reverse=True)[: 2 * args.batch_size]
        measure_peaks(args, configs, longest)
    report(configs, args)


def report(configs: list[Config], args: argparse.Namespace) -> None:
    today = next(c for c in configs if c.name == "today")
    two = next((c for c in configs if c.options is None), None)
    header = f"{'configuration':<14} {'batch':>5} {'seconds':>8} {'texts/s':>8} {'tokens/s':>9} {'vs today':>9}"
    header += f" {'vs two-pass':>11}" if two else ""
    header += f" {'peak MiB':>9} {'max |diff|':>10} {'same rationale':>14}"
    print("\n" + header)
    for c in configs:
        line = f"{c.name:<14} {c.batch_size:>5} {c.seconds:>8.1f} {c.texts / c.seconds:>8.2f} {c.tokens / c.seconds:>9.1f}"
        line += f" {today.seconds / c.seconds:>8.2f}x"
        line += f" {two.seconds / c.seconds:>10.2f}x" if two else ""
        line += f" {c.peak_mib:>9.0f}" if c.peak_mib is not None else f" {'-':>9}"
        if c is today or c.options is None:
            line += f" {'(reference)' if c is today else 'n/a':>10} {'':>14}"
        else:
            same = statistics.fmean(c.same_rationales) if c.same_rationales else 1.0
            line += f" {c.max_difference:>10.1e} {same:>13.1%}" if args.max_new_tokens else f" {c.max_difference:>10.1e} {'':>14}"
        print(line)
    print(f"(peak MiB: resident-memory high-water mark above the loaded model while embedding the {2 * args.batch_size} longest texts)")


if __name__ == "__main__":
    main()
