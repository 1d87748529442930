"""An explained similarity (or several: a search's hits) as ONE self-contained HTML page.

The page needs nothing but a browser: styles are inline, there is no script, no web font, no image and no
link to fetch. Every token is shaded by what it adds to the cosine (warm: pulls the texts together, cool:
pushes them apart; opacity proportional to |contribution| over the page's largest), with its exact value in
a tooltip; a bar shows the input / template / rationale split; a table lists the top token pairs.

Every piece of user text (texts, rationales, tokens, labels, titles) goes through ``html.escape``: a text
holding markup or control-token strings (``<script>``, ``<|im_end|>``) shows literally and cannot inject
markup.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence

from grace.embedding.attribution import SideExplanation, SimilarityExplanation

PART_COLOURS = {"input": "#2563eb", "template": "#94a3b8", "rationale": "#ea580c"}
_POSITIVE = "234, 88, 12"  # warm: the token pulls the texts together
_NEGATIVE = "37, 99, 235"  # cool: it pushes them apart

_STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f8fafc; color: #0f172a; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 40px; }
h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
.sub { color: #475569; margin: 0 0 22px; font-size: 14px; }
section.pair { background: #fff; border: 1px solid #e2e8f0; border-radius: 14px; padding: 22px 24px; margin-bottom: 22px;
               box-shadow: 0 1px 2px rgba(15, 23, 42, .05); }
.heading { display: flex; align-items: baseline; gap: 14px; margin-bottom: 10px; }
.heading h2 { font-size: 18px; margin: 0; }
.summary { display: grid; grid-template-columns: 150px 1fr; gap: 24px; align-items: center; margin-bottom: 18px; }
.cos .num { display: block; font-size: 44px; font-weight: 700; line-height: 1; font-variant-numeric: tabular-nums; }
.cos .lbl { color: #64748b; font-size: 13px; text-transform: uppercase; letter-spacing: .06em; }
.bar { display: flex; height: 30px; border-radius: 8px; overflow: hidden; background: #f1f5f9; }
.seg { color: #fff; font-size: 13px; font-weight: 600; display: flex; align-items: center; justify-content: center;
       white-space: nowrap; overflow: hidden; }
.split-legend { display: flex; gap: 18px; font-size: 13px; color: #334155; margin-top: 6px; flex-wrap: wrap; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 3px; margin-right: 5px; vertical-align: -1px; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
article { border: 1px solid #e2e8f0; border-radius: 10px; padding: 14px 16px; min-width: 0; }
article h3 { margin: 0 0 8px; font-size: 15px; color: #334155; }
.label { font-size: 11px; text-transform: uppercase; letter-spacing: .08em; color: #64748b; margin: 10px 0 3px;
         font-weight: 600; }
.tokens { margin: 0; white-space: pre-wrap; word-wrap: break-word; font-size: 15.5px; line-height: 1.9; }
.tokens.template { font: 12px/1.8 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; color: #475569; }
.t { border-radius: 3px; padding: 1px 0; }
.flag { display: inline-block; font-size: 11px; color: #9a3412; background: #ffedd5; border-radius: 4px; padding: 0 6px;
        margin-left: 6px; }
table { border-collapse: collapse; width: 100%; margin-top: 16px; font-size: 14px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #f1f5f9; }
th { color: #64748b; font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f1f5f9; border-radius: 4px; padding: 1px 5px; white-space: pre-wrap; }
.legend { display: flex; gap: 12px; align-items: center; font-size: 13px; color: #475569; margin-top: 6px; flex-wrap: wrap; }
.swatch { display: inline-block; width: 54px; height: 12px; border-radius: 3px; vertical-align: -1px; }
footer { color: #64748b; font-size: 13px; margin-top: 10px; }
"""


@dataclass
class PageItem:
    """One explained pair on a page, with what to call it and its two sides."""

    explanation: SimilarityExplanation
    heading: str = ""  # e.g. "hit 1 · d17"; "" for a page of one pair
    labels: tuple[str, str] = ("Text A", "Text B")


def _shade(value: float, scale: float) -> str:
    alpha = min(abs(value) / scale, 1.0) * 0.85 if scale > 0 else 0.0
    return f"rgba({_POSITIVE if value >= 0 else _NEGATIVE}, {alpha:.3f})"


def visible(piece: str) -> str:
    """A token as a cell of a table: a whitespace-only token shows its escapes (a newline as \\n)."""
    return piece if piece.strip() else piece.encode("unicode_escape").decode("ascii").replace(" ", "\u2423")


def _tokens(side: SideExplanation, part: str, scale: float) -> str:
    """The tokens of ``part`` as shaded spans. A newline shows as a visible mark, and a run of them breaks the
    line once: a rationale of blank lines would otherwise be a tall empty box."""
    spans = []
    broke = False
    for piece, span, value in zip(side.pieces, side.spans, side.contributions.tolist()):
        if span != part:
            continue
        title = f"{value:+.5f} of the cosine ({span})"
        text = escape(piece).replace("\n", "\u21b5")
        spans.append(f'<span class="t" style="background:{_shade(value, scale)}" title="{escape(title)}">{text}</span>')
        if "\n" in piece and not broke:
            spans.append("\n")
        broke = "\n" in piece or (broke and not piece.strip())
    return "".join(spans)


def _side(side: SideExplanation, label: str, scale: float) -> str:
    cut = '<span class="flag">cut to the prompt budget</span>' if side.input_truncated else ""
    blocks = [f"<h3>{escape(label)}{cut}</h3>", '<div class="label">input text</div>', f'<p class="tokens">{_tokens(side, "input", scale)}</p>']
    if "rationale" in side.spans:
        flag = '<span class="flag">cut at the length limit</span>' if side.truncated else ""
        blocks += [f'<div class="label">rationale{flag}</div>', f'<p class="tokens">{_tokens(side, "rationale", scale).strip() or "(empty)"}</p>']
    else:
        blocks.append('<div class="label">no rationale</div>')
    if "template" in side.spans:
        blocks += ['<div class="label">chat-template tokens</div>', f'<p class="tokens template">{_tokens(side, "template", scale)}</p>']
    return "<article>" + "".join(blocks) + "</article>"


def _split(explained: SimilarityExplanation) -> str:
    parts, shares = explained.parts(), explained.shares()
    positive = {name: max(value, 0.0) for name, value in parts.items()}
    total = sum(positive.values()) or 1.0
    segments = "".join(
        f'<div class="seg" style="width:{100 * value / total:.2f}%;background:{PART_COLOURS[name]}">'
        f"{escape(name) + ' ' if value / total > 0.14 else ''}{100 * shares[name]:.0f}%</div>"  # a narrow segment: the number only
        for name, value in positive.items() if value > 0
    )  # fmt: skip
    legend = "".join(
        f'<span><span class="dot" style="background:{PART_COLOURS[name]}"></span>{escape(name)}: {parts[name]:+.4f} '
        f"({100 * shares[name]:.1f}% of the cosine)</span>"
        for name in parts
    )
    return f'<div><div class="bar">{segments}</div><div class="split-legend">{legend}</div></div>'


def _pairs(explained: SimilarityExplanation, labels: tuple[str, str]) -> str:
    if not explained.top_pairs:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(visible(explained.a.pieces[p.a]))}</code> <small>{escape(explained.a.spans[p.a])}</small></td>"
        f"<td><code>{escape(visible(explained.b.pieces[p.b]))}</code> <small>{escape(explained.b.spans[p.b])}</small></td>"
        f'<td class="num">{p.contribution:+.5f}</td></tr>'
        for p in explained.top_pairs
    )
    head = f"<tr><th>token of {escape(labels[0])}</th><th>token of {escape(labels[1])}</th><th>adds to the cosine</th></tr>"
    return f"<table>{head}{rows}</table>"


def _scale(items: Sequence[PageItem]) -> float:
    """The page's largest |contribution| of an input or rationale token: one colour scale for every pair."""
    values = [
        abs(value)
        for item in items
        for side in (item.explanation.a, item.explanation.b)
        for value, span in zip(side.contributions.tolist(), side.spans)
        if span != "template"
    ]
    return max(values, default=0.0)


def render_page(items: Sequence[PageItem], *, title: str = "Why are these texts close?", subtitle: str = "") -> str:
    """The HTML page (a str) of ``items``; ValueError when there is nothing to show."""
    if not items:
        raise ValueError("nothing to render: give at least one explained pair")
    scale = _scale(items)
    sections = []
    for item in items:
        explained = item.explanation
        heading = f'<div class="heading"><h2>{escape(item.heading)}</h2></div>' if item.heading else ""
        sections.append(
            f'<section class="pair">{heading}<div class="summary"><div class="cos"><span class="num">{explained.cosine:.3f}</span>'
            f'<span class="lbl">cosine similarity</span></div>{_split(explained)}</div>'
            f'<div class="sides">{_side(explained.a, item.labels[0], scale)}{_side(explained.b, item.labels[1], scale)}</div>'
            f"{_pairs(explained, item.labels)}</section>"
        )
    pooling = items[0].explanation.pooling
    subtitle = subtitle or (
        f"Exact token attribution of GRACE embeddings (pooling: {pooling}). Each token's shade is what it adds to the "
        "cosine; a side's contributions add up to the cosine exactly."
    )
    legend = (
        f'<div class="legend"><span class="swatch" style="background:linear-gradient(90deg, rgba({_POSITIVE},0.05), '
        f'rgba({_POSITIVE},0.85))"></span> pulls the texts together <span class="swatch" style="background:'
        f'linear-gradient(90deg, rgba({_NEGATIVE},0.05), rgba({_NEGATIVE},0.85))"></span> pushes them apart '
        f"<span>· darkest = {scale:.4f} of the cosine · hover a token for its value</span></div>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f'<h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p>{legend}<div style="height:14px"></div>'
        + "".join(sections)
        + "<footer>Written by GRACE (grace-explain). For token i of a text with n pooled tokens and mean state mu, "
        "its share is (h_i &middot; e_other) / (n |mu|).</footer></main></body></html>\n"
    )


def write_page(path: str | Path, items: Sequence[PageItem], **kwargs) -> Path:
    """Write ``render_page(items, **kwargs)`` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--html {path}: is a directory; give a file name such as explanation.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(items, **kwargs), encoding="utf-8")
    return path
