"""Does the rationale carry the signal? Rationale share of GRACE similarities, base model against a trained one.

    python experiments/explanations/explanations.py measure --model packaged:smollm2-135m --label base
    python experiments/explanations/explanations.py measure --model outputs/explanations/runs/<run> --label trained
    python experiments/explanations/explanations.py figure

``measure`` embeds, with the quality study's evaluation setting (greedy rationales of at most 32 tokens,
prompts cut at 256 tokens), the Lee et al. news documents (all 50; every one of the 1225 rated pairs is
explained from the 50 generations) and chatterbot's held-out retrieval task (the first ``--queries``
questions against the whole 140-answer corpus: each question with its answer, related, and with its
best-scoring wrong answer, unrelated), and writes ``results/<label>.json``: the mean rationale share of
related and unrelated pairs (``grace.evaluation.rationale_share``) and a few explained examples (text and a
self-contained page, ``results/<label>_examples.{txt,html}``). ``figure`` draws ``results/rationale_share.png``
from every ``results/*.json`` and prints the table of the README.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"


def measure(args: argparse.Namespace) -> None:
    from grace.embedding.encoder import GraceEncoder
    from grace.evaluation.rationale_share import explain_pairs, retrieval_rationale_share, sts_rationale_share
    from grace.evaluation.tasks.chatterbot import chatterbot_retrieval_data
    from grace.evaluation.tasks.lee import lee_pairs
    from grace.explanation.html import PageItem, write_page
    from grace.explanation.terminal import format_explanation

    encoder = GraceEncoder.from_pretrained(args.model, batch_size=16)
    settings = {}
    for role, config in encoder.configs.items():  # the quality study's evaluation setting, for every model alike
        settings[role] = replace(config, rationale=True, max_prompt_tokens=args.max_prompt_tokens,
                                 decoding=replace(config.decoding, max_new_tokens=args.max_new_tokens, temperature=0.0))  # fmt: skip
    encoder = encoder.with_settings(settings["document"], settings["query"])
    started = time.time()
    lee = lee_pairs()
    sts = sts_rationale_share(encoder, lee["sentence1"], lee["sentence2"], lee["score"], name="GraceLeeSTS")
    lee_seconds = time.time() - started
    data = chatterbot_retrieval_data()
    queries = dict(list(data.queries.items())[: args.queries])
    retrieval = retrieval_rationale_share(encoder, queries, data.corpus, data.qrels, name="GraceChatterbotRetrieval")
    seconds = time.time() - started
    # A few examples: the first three chatterbot questions with their answers, and the Lee pair rated most similar.
    best = max(range(len(lee)), key=lambda i: lee["score"][i])
    examples = [(q, data.corpus[next(iter(data.qrels[qid]))]) for qid, q in list(queries.items())[:3]]
    explained = explain_pairs(encoder, examples, role_a="query", role_b="document", top_pairs=5)
    explained += explain_pairs(encoder, [(lee["sentence1"][best], lee["sentence2"][best])], top_pairs=5)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = "\n".join(format_explanation(e, k=5, colour=False) for e in explained)
    (RESULTS / f"{args.label}_examples.txt").write_text(text)
    items = [PageItem(e, heading=f"{args.label} · example {i + 1}") for i, e in enumerate(explained)]
    write_page(RESULTS / f"{args.label}_examples.html", items, title=f"Explained examples, {args.label} model")
    result = {
        "label": args.label, "model": args.model, "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": args.max_prompt_tokens, "queries": len(queries), "seconds": round(seconds, 1),
        "lee_seconds": round(lee_seconds, 1), "tasks": [sts.as_dict(), retrieval.as_dict()],
        "examples": [{"cosine": e.cosine, "shares": e.shares()} for e in explained],
    }  # fmt: skip
    (RESULTS / f"{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["tasks"], indent=2))
    print(f"{seconds:.0f} s")


def figure(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    results.sort(key=lambda r: r["label"] != "base")
    tasks = [t["name"] for t in results[0]["tasks"]]
    print("| model | task | pairs (related / unrelated) | rationale share, related | unrelated | difference | cosine, related | unrelated |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        for t in r["tasks"]:
            print(f"| {r['label']} | {t['name']} | {t['pairs_related']} / {t['pairs_unrelated']} | {100 * t['share_related']:.1f}% | "
                  f"{100 * t['share_unrelated']:.1f}% | {100 * t['share_difference']:+.2f} pt | {t['cosine_related']:.4f} | {t['cosine_unrelated']:.4f} |")  # fmt: skip
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    width = 0.38
    for ax, task in zip(axes[0], tasks):
        for offset, (kind, colour) in enumerate((("related", "#ea580c"), ("unrelated", "#94a3b8"))):
            values = [100 * next(t for t in r["tasks"] if t["name"] == task)[f"share_{kind}"] for r in results]
            xs = [i + (offset - 0.5) * width for i in range(len(results))]
            bars = ax.bar(xs, values, width, label=f"{kind} pairs", color=colour)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(results)), [r["label"] for r in results])
        ax.set_title(task, fontsize=11)
        ax.set_ylabel("rationale share of the cosine (%)")
        ax.spines[["top", "right"]].set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=2, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(RESULTS / "rationale_share.png", dpi=130)
    print(f"figure: {RESULTS / 'rationale_share.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure")
    run.add_argument("--model", required=True)
    run.add_argument("--label", required=True)
    run.add_argument("--queries", type=int, default=40)
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--max-prompt-tokens", type=int, default=256)
    commands.add_parser("figure")
    args = parser.parse_args()
    measure(args) if args.command == "measure" else figure(args)


if __name__ == "__main__":
    main()
