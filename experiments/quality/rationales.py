"""What the GRACE runs of the quality study write: greedy rationales for a few held-out texts, as markdown.

    python experiments/quality/rationales.py outputs/quality/study [--texts 3] [--corpus polarity] > rationales.md

The texts are the first ``--texts`` documents of the Lee news corpus (``GraceLeeSTS`` of the offline
suite, read from the installed gensim) or, with ``--corpus polarity``, the first sentences of the Pang & Lee
polarity corpus (``GracePangLeePolarity``, also from gensim); no training data either way. The
models are the base model (packaged SmolLM2-135M-Instruct) and the newest checkpoint of seed ``--seed`` of
every GRACE method under ``<out>/runs`` that has one (``--methods``: of these only). Every model writes with the evaluation's setting: greedy decoding, at most
32 new tokens (as in training), prompts cut at 256 tokens; each checkpoint keeps its saved system prompt.
Progress goes to stderr, the markdown to stdout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import BASE, METHODS, _methods, find_runs  # noqa: E402  (also puts this checkout's grace on the path)

from grace.embedding.encoder import GraceEncoder  # noqa: E402
from grace.evaluation.tasks.lee import read_lee_documents  # noqa: E402
from grace.evaluation.tasks.polarity import read_polarity_sentences  # noqa: E402

CORPORA = {"lee": read_lee_documents, "polarity": lambda: [sentence for sentence, _ in read_polarity_sentences()]}
TEXT_NAME = {"lee": "Lee document", "polarity": "Polarity sentence"}
SHOWN_CHARS = 300  # of each text in the markdown (the model reads up to --max-prompt-tokens of it)


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the study folder: its runs are under <out>/runs")
    parser.add_argument("--texts", type=int, default=3, help="how many texts of the corpus, from the first")
    parser.add_argument("--corpus", choices=CORPORA, default="lee", help="Lee news documents or polarity sentences")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m.startswith("quality_grace")), help="GRACE methods shown")
    parser.add_argument("--seed", type=int, default=0, help="which seed's checkpoint of each method")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="rationale length, as in training")
    parser.add_argument("--max-prompt-tokens", type=int, default=256, help="prompt budget, as in training")
    args = parser.parse_args()
    texts = CORPORA[args.corpus]()[: args.texts]
    methods = _methods(args.methods)
    models = [("SmolLM2-135M base", BASE)] + [
        (f"{METHODS[experiment]} seed {seed}, {checkpoint.name}", str(checkpoint))
        for experiment, seed, checkpoint in find_runs(args.out)
        if experiment in methods and experiment.startswith("quality_grace") and seed == args.seed
    ]  # fmt: skip
    setting = dict(rationale=True, temperature=0.0, num_samples=1)  # greedy, as the evaluation embeds
    setting.update(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens)
    written = {}  # model label -> (rationales, truncated flags)
    for label, source in models:
        print(f"{label}: {source}", file=sys.stderr, flush=True)
        result = GraceEncoder.from_pretrained(source).encode_with_rationales(texts, **setting)
        written[label] = (result.rationales, result.truncated)

    print(f"# Rationales: greedy, at most {args.max_new_tokens} new tokens, prompts cut at {args.max_prompt_tokens} tokens\n")
    print(f"Models: {len(models)} ({len(models) - 1} GRACE checkpoint(s) of seed {args.seed} under `{args.out / 'runs'}`).\n")
    for i, text in enumerate(texts):
        shown = one_line(text[:SHOWN_CHARS]) + (" …" if len(text) > SHOWN_CHARS else "")
        print(f"## {TEXT_NAME[args.corpus]} {i + 1}\n\n> {shown}\n\n| model | rationale | cut at the limit |\n|---|---|---|")
        for label, (rationales, truncated) in written.items():
            print(f"| {label} | {one_line(rationales[i]) or '(empty)'} | {'yes' if truncated[i] else 'no'} |")
        print()


if __name__ == "__main__":
    main()
