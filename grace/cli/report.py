"""``grace-report RUN_DIR [RUN_DIR ...]``: one readable report of one or several training runs.

    grace-report outputs/2025-01-31/14-02-11                 # one run  -> <run>/report/report.md
    grace-report multirun/2025-01-31/14-02-11                # a sweep: every job inside, curves overlaid
    grace-report outputs/a outputs/b -o compare --steps 1 50 # chosen runs, rationales at steps 1 and 50

What the report holds: ``grace.runs.report``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from grace.runs.report import write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grace-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, or sweep directories holding runs")
    parser.add_argument("-o", "--out", type=Path, help="output folder (default: <path>/report for one path, else <common parent>/report)")
    parser.add_argument("--steps", type=int, nargs="+", default=[], help="steps whose sample rationales to show (default: first, middle, last)")
    parser.add_argument(
        "--explain-pairs", type=int, default=0, metavar="N",
        help="explain N fixed held-out pairs at each run's first and last checkpoint (loads both models; default 0: none)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.explain_pairs < 0:
            raise ValueError(f"--explain-pairs must be >= 0, got {args.explain_pairs}")
        report = write_report(args.runs, args.out, sample_steps=args.steps, explain_pairs=args.explain_pairs)
    except (ValueError, OSError) as error:
        print(f"grace-report: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"report: {report}")


if __name__ == "__main__":
    main()
