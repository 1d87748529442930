"""``grace-explain "text a" "text b" --model SRC``: why two texts are as close as they are, token by token.

    grace-explain "A man plays a guitar." "Someone performs music." --model packaged:smollm2-135m
    grace-explain "where do cats sleep?" "on the mat" --model runs/exp1 --role-a query --html why.html

Prints the cosine, its split between input, template and rationale tokens, both texts and rationales with
their strongest tokens marked (``[[token]]``; also coloured on a terminal unless ``NO_COLOR`` is set or
``--no-colour`` is given) and the top token pairs. ``--html FILE`` also writes one self-contained page
(``grace.explanation.html``). The numbers: ``GraceEncoder.explain_similarity``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from grace.cli.shared_arguments import USER_ERRORS, add_model_arguments, add_setting_arguments, load_encoder, report_error, with_overrides

ROLES = ("document", "query")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grace-explain", description="Explain the similarity of two texts token by token.")
    parser.add_argument("a", help="the first text")
    parser.add_argument("b", help="the second text")
    add_model_arguments(parser)
    add_setting_arguments(parser, what="both texts")
    parser.add_argument("--role-a", choices=ROLES, default="document", help="settings text a is embedded with (default document)")
    parser.add_argument("--role-b", choices=ROLES, default="document", help="settings text b is embedded with (default document)")
    parser.add_argument("--top", type=int, default=5, help="strongest tokens marked per side (default 5)")
    parser.add_argument("--top-pairs", type=int, default=5, help="token pairs listed (default 5; 0: none)")
    parser.add_argument("--allow-truncated", action="store_true", help="explain a text over the prompt budget as cut")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object instead of text")
    parser.add_argument("--no-colour", "--no-color", dest="colour", action="store_false", help="never colour the output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _explain(args)
    except USER_ERRORS as error:
        return report_error("grace-explain", error)


def _explain(args: argparse.Namespace) -> int:
    if args.top < 0 or args.top_pairs < 0:
        raise ValueError(f"--top and --top-pairs must be >= 0, got {args.top} and {args.top_pairs}")
    if args.html and os.path.isdir(args.html):
        raise ValueError(f"--html {args.html}: is a directory; give a file name such as explanation.html")
    encoder = load_encoder(args)
    encoder.configs = {role: with_overrides(config, args.rationale, args.max_new_tokens) for role, config in encoder.configs.items()}
    explained = encoder.explain_similarity(
        args.a, args.b, role_a=args.role_a, role_b=args.role_b, top_pairs=args.top_pairs, allow_truncated=args.allow_truncated
    )
    if args.json:
        print(json.dumps(as_json(explained), ensure_ascii=False))
    else:
        from grace.explanation.terminal import format_explanation

        colour = args.colour and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(format_explanation(explained, k=args.top, colour=colour))
    if args.html:
        from grace.explanation.html import PageItem, write_page

        path = write_page(args.html, [PageItem(explained)], title="Why are these texts close?")
        print(f"page: {path}", file=sys.stderr)
    return 0


def as_json(explained) -> dict:
    """The explanation's numbers as plain JSON: cosine, parts, shares, each side's tokens, the top pairs."""

    def side(s) -> dict:
        return {
            "text": s.text, "rationale": s.rationale, "truncated": s.truncated, "input_truncated": s.input_truncated,
            "tokens": [{"piece": p, "span": k, "contribution": float(c)} for p, k, c in zip(s.pieces, s.spans, s.contributions.tolist())],
        }  # fmt: skip

    return {
        "cosine": explained.cosine,
        "pooling": explained.pooling,
        "parts": explained.parts(),
        "shares": explained.shares(),
        "a": side(explained.a),
        "b": side(explained.b),
        "top_pairs": [{"a": p.a, "b": p.b, "contribution": p.contribution} for p in explained.top_pairs],
    }


if __name__ == "__main__":
    sys.exit(main())
