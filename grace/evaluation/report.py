"""Results of an evaluation as one comparison table: ``results.json`` for machines, ``results.md`` for people.

One row per encoder, one column per task (its main score, x100), the mean over tasks, and what a reader
needs to trust a row: whether a rationale was written, how often it hit its length limit, the mteb
model name and revision its raw results sit under, and how long it took.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


@dataclass
class EncoderResult:
    """One row: an encoder's main score on every task it ran."""

    label: str
    model_name: str  # mteb's name; raw results: <results_dir>/results/<name with / as __>/<revision>/
    revision: str
    rationale: bool  # a rationale was generated for every text
    scores: dict[str, float]  # task name -> main score as mteb reports it (usually 0..1)
    task_seconds: dict[str, float] = field(default_factory=dict)  # task name -> mteb's evaluation time
    load_seconds: float = 0.0
    eval_seconds: float = 0.0  # wall time of mteb.evaluate for this encoder, all tasks
    texts_embedded: int = 0  # occurrences passed to encode, before de-duplication and caching
    truncation_rate: float | None = None  # share of those texts whose rationale hit max_new_tokens
    # The cost of a row, over the distinct texts it computed (not served by a cache): rationale tokens per text
    # (EOS included; a role without a rationale counts 0) and texts embedded per wall second, generation included.
    rationale_tokens_per_text: float | None = None
    texts_per_second: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the embedding settings, both roles
    from_cache: bool = False  # scores read from mteb's result cache: nothing was embedded or timed

    def mean(self, tasks: list[str]) -> float | None:
        """Mean main score over ``tasks``; ``None`` unless the row has them all (a partial mean misleads)."""
        if not tasks or any(task not in self.scores for task in tasks):
            return None
        return sum(self.scores[task] for task in tasks) / len(tasks)


@dataclass
class ComparisonTable:
    tasks: list[str]  # column order
    main_scores: dict[str, str]  # task name -> its main score's metric name
    rows: list[EncoderResult] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)  # settings, versions, threads: what times depend on

    def to_markdown(self) -> str:
        """A GitHub markdown table, scores x100 with two decimals, then the per-row details."""
        header = ["encoder", "rationale", *[f"{_short(t)} ({self.main_scores.get(t, '?')})" for t in self.tasks]]
        header += ["mean", "truncated", "tokens/text", "texts/s", "eval time"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        for row in self.rows:
            cells = [row.label, "yes" if row.rationale else "no"]
            cells += [_score(row.scores.get(task)) for task in self.tasks]
            cells += [_score(row.mean(self.tasks))]
            cells += ["-" if row.truncation_rate is None else f"{100 * row.truncation_rate:.0f}%"]
            cells += ["-" if row.rationale_tokens_per_text is None else f"{row.rationale_tokens_per_text:.1f}"]
            cells += ["-" if row.texts_per_second is None else f"{row.texts_per_second:.1f}"]
            cells += ["cached" if row.from_cache else _duration(row.eval_seconds)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Main score x100 per task; `mean` over all columns. `truncated`: share of embedded texts whose")
        lines.append("rationale hit the length limit; `tokens/text`: rationale tokens per distinct text computed (EOS")
        lines.append("included, 0 without a rationale); `texts/s`: distinct texts embedded per wall second, generation")
        lines.append("included (`-`: every text came from a cache); `cached`: scores read back from mteb's result cache.")
        lines.append("Raw mteb results, per model name and revision:")
        lines.extend(f"- {row.label}: `{row.model_name}` revision `{row.revision}`" for row in self.rows)
        settings = self.context.get("settings")
        if settings:
            decoding = (
                "greedy"
                if settings["temperature"] == 0
                else f"T={settings['temperature']} top_p={settings['top_p']} seed={settings['seed']} "
                f"x{settings['num_samples']} samples"
            )
            lines.append(
                f"\nRationales: {decoding}, at most {settings['max_new_tokens']} new tokens; batch "
                f"{settings['batch_size']}, {settings['device']} {settings['dtype']}, "
                f"{self.context.get('torch_threads', '?')} torch threads, mteb {self.context.get('mteb_version', '?')}."
            )
        return "\n".join(lines) + "\n"

    def primary_scores(self) -> dict[str, float]:
        """The last row's ``{task: score, "mean": mean}`` (the trained model of a before/after table);
        ``mean`` only when the row has every task. Empty for an empty table."""
        if not self.rows:
            return {}
        row = self.rows[-1]
        mean = row.mean(self.tasks)
        return {**{task: row.scores[task] for task in self.tasks if task in row.scores}, **({} if mean is None else {"mean": mean})}

    def summary(self, prefix: str) -> dict[str, float]:
        """Flat scores for a dashboard: ``<prefix>/<row>/<task>`` and ``<prefix>/<row>/mean`` for every row,
        and ``<prefix>/<task>``, ``<prefix>/mean`` for the last (primary) row. Row labels are made key-safe."""
        flat: dict[str, float] = {}
        for row in self.rows:
            label = _key(row.label)
            flat.update({f"{prefix}/{label}/{task}": row.scores[task] for task in self.tasks if task in row.scores})
            mean = row.mean(self.tasks)
            if mean is not None:
                flat[f"{prefix}/{label}/mean"] = mean
        flat.update({f"{prefix}/{name}": value for name, value in self.primary_scores().items()})
        return flat

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "main_scores": self.main_scores,
            "rows": [{**asdict(row), "mean": row.mean(self.tasks)} for row in self.rows],
            "context": self.context,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComparisonTable":
        rows = [EncoderResult(**{k: v for k, v in row.items() if k != "mean"}) for row in data["rows"]]
        return cls(list(data["tasks"]), dict(data["main_scores"]), rows, dict(data.get("context", {})))

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """``results.json`` and ``results.md`` in ``directory``; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / RESULTS_JSON, directory / RESULTS_MARKDOWN
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        markdown_path.write_text(self.to_markdown())
        return json_path, markdown_path


def _key(label: str) -> str:
    """``"base + rationale"`` -> ``"base_rationale"``: no ``/`` (a section in wandb), no spaces."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "row"


def _short(task: str) -> str:
    return task.removeprefix("Grace")


def _score(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
