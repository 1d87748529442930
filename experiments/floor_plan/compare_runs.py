"""Two runs' metrics.jsonl, step by step, timing aside: identical, or the first differences.

    python experiments/floor_plan/compare_runs.py RUN_A RUN_B [--common]

Exit status 0 when every non-timing value of every step is equal (NaN equals NaN), 1 otherwise.
``--common``: compare only the keys both runs logged (a newer version may log more metrics).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines if line.strip()]


def same(a, b) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return a == b or both_nan


def main() -> int:
    a, b = (rows(Path(p)) for p in sys.argv[1:3])
    common = "--common" in sys.argv[3:]
    differences = [
        f"step {row_a.get('step')}: {key} = {row_a.get(key)!r} vs {row_b.get(key)!r}"
        for row_a, row_b in zip(a, b)
        for key in sorted(set(row_a) & set(row_b) if common else set(row_a) | set(row_b))
        if not same(row_a.get(key), row_b.get(key))
    ]
    if len(a) != len(b):
        differences.insert(0, f"{len(a)} steps vs {len(b)} steps")
    print("\n".join(differences[:20]) if differences else f"identical: {len(a)} steps x {len(a[0]) if a else 0} values")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
