"""The run report's "Explained held-out pairs": which tokens carried a few fixed pairs' similarity before
and after training, and how the rationale's share of it moved (``grace-report --explain-pairs N``).

The pairs are fixed, so every run and every report shows the same ones: the first N question/answer pairs
of chatterbot's held-out categories (``grace.data.chatterbot.chatterbot_split("eval")``, never trained on
by ``packaged:chatterbot`` runs), the question embedded as a query, the answer as a document. "Before" is
the run's first checkpoint, or its start model when it kept only one (``start_model.json``); "after" is its
last checkpoint. Each is loaded as ``GraceEncoder.from_pretrained`` loads it, with its saved settings.
Besides the markdown, ``explained_pairs.html`` shows every pair at both points, tokens shaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from grace.data.chatterbot import chatterbot_split
from grace.embedding.attribution import SideExplanation, SimilarityExplanation
from grace.explanation.html import PageItem, write_page
from grace.training.checkpoint import complete_checkpoints

PAGE_FILE = "explained_pairs.html"
START_MODEL_FILE = "start_model.json"


def probe_pairs(count: int) -> list[tuple[str, str]]:
    """The first ``count`` (question, answer) pairs of chatterbot's held-out categories."""
    return [(pair.question, pair.answer) for pair in chatterbot_split("eval")[:count]]


def before_and_after(run_path: Path) -> list[tuple[str, str]]:
    """``[(label, model source), ...]``: the first checkpoint (or the start model) and the last checkpoint;
    [] when the run has no checkpoint."""
    checkpoints = complete_checkpoints(run_path)
    if not checkpoints:
        return []
    last = (checkpoints[-1].name, str(checkpoints[-1]))
    if len(checkpoints) > 1:
        return [(checkpoints[0].name, str(checkpoints[0])), last]
    start = run_path / START_MODEL_FILE
    if start.is_file():
        source = json.loads(start.read_text()).get("source")
        if source:
            return [(f"start ({source})", str(source)), last]
    return [last]


def _strongest(side: SideExplanation, k: int = 4) -> str:
    ranked = side.strongest(len(side.pieces), ("input", "rationale"))
    shown = [f"`{side.pieces[i].strip()}` {float(side.contributions[i]):+.3f}" for i in ranked if side.pieces[i].strip()][:k]
    return ", ".join(shown).replace("|", "\\|") or "-"


def explained_pairs_section(run_path: Path, out: Path, count: int, *, label: str = "") -> list[str]:
    """Markdown lines of the section for one run; writes ``out/<label>explained_pairs.html`` beside it."""
    from grace.embedding.encoder import GraceEncoder
    from grace.evaluation.rationale_share import explain_pairs

    points = before_and_after(run_path)
    if not points:
        return ["No checkpoint yet: nothing to explain.", ""]
    pairs = probe_pairs(count)
    explained: dict[str, list[SimilarityExplanation]] = {}
    for name, source in points:
        encoder = GraceEncoder.from_pretrained(source)
        explained[name] = explain_pairs(encoder, pairs, role_a="query", role_b="document", top_pairs=3)
    lines = [
        "Each fixed held-out pair (a chatterbot question and its answer) at the first and last point of the run: the cosine, "
        "the share of it carried by rationale tokens, and the input or rationale tokens that added most (exact attribution, "
        "`grace-explain`).",
        "",
    ]
    for index, (question, answer) in enumerate(pairs):
        lines += [f"**Pair {index + 1}.** *question:* {_cell(question)} · *answer:* {_cell(answer)}", ""]
        lines += ["| model | cosine | rationale share | question's strongest tokens | answer's strongest tokens |", "|---|---:|---:|---|---|"]
        for name, _ in points:
            item = explained[name][index]
            lines.append(
                f"| {_cell(name)} | {item.cosine:.4f} | {100 * item.rationale_share:.1f}% | {_strongest(item.a)} | {_strongest(item.b)} |"
            )
        lines.append("")
    items = [
        PageItem(explained[name][index], heading=f"pair {index + 1} · {name}", labels=("Question", "Answer"))
        for index in range(len(pairs)) for name, _ in points
    ]  # fmt: skip
    page = write_page(out / f"{label}{PAGE_FILE}", items, title="Explained held-out pairs, before and after training")
    return lines + [f"Every pair at both points, tokens shaded: [{page.name}]({page.name}).", ""]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("<", "&lt;").replace("|", "\\|")
