"""An explained similarity as terminal text: both texts and rationales with their strongest tokens marked.

Marks are readable without colour: a strong token is written ``[[token]]``; with ``colour=True`` it is also
shown in bold on a warm background (ANSI escapes; ``grace-explain`` turns colour off when its output is not
a terminal or ``NO_COLOR`` is set). Control characters in user text are shown escaped, so a text cannot
move the cursor or recolour the terminal.
"""
from __future__ import annotations

import textwrap

from grace.embedding.attribution import SideExplanation, SimilarityExplanation

_BOLD_WARM = "\x1b[1;30;43m"  # bold, black on yellow
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"
BAR_WIDTH = 40
_BAR_CHARS = {"input": "I", "template": "t", "rationale": "R"}


def safe(text: str) -> str:
    """``text`` with control characters (ESC, bell, ...) escaped; newlines and tabs kept."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def marked_text(side: SideExplanation, part: str, strongest: set[int], *, colour: bool) -> str:
    """The tokens of ``part`` ("input" or "rationale") in order, those in ``strongest`` marked."""
    out = []
    for index, (piece, span) in enumerate(zip(side.pieces, side.spans)):
        if span != part:
            continue
        piece = safe(piece)
        if index in strongest and piece.strip():
            lead = piece[: len(piece) - len(piece.lstrip())]
            core = piece.strip()
            out.append(f"{lead}{_BOLD_WARM}[[{core}]]{_RESET}" if colour else f"{lead}[[{core}]]")
        else:
            out.append(piece)
    return "".join(out).strip()


def split_bar(explained: SimilarityExplanation, width: int = BAR_WIDTH) -> str:
    """``[IIIIIIttttRRRRRRRRRR]``: the cosine's input / template / rationale parts, by size (negative parts left out)."""
    parts = {name: max(value, 0.0) for name, value in explained.parts().items()}
    total = sum(parts.values()) or 1.0
    cells = {name: round(width * value / total) for name, value in parts.items()}
    return "[" + "".join(_BAR_CHARS[name] * count for name, count in cells.items()) + "]"


def shown(piece: str) -> str:
    """A token for a list: stripped, or its escapes when it is only whitespace (a newline shows as \\n)."""
    return safe(piece).strip() or piece.encode("unicode_escape").decode("ascii")


def _strongest_line(side: SideExplanation, k: int) -> str:
    shown_ = [f'"{shown(side.pieces[i])}" {float(side.contributions[i]):+.4f} ({side.spans[i]})' for i in side.strongest(k)]
    return "strongest: " + ", ".join(shown_)


def visible_strongest(side: SideExplanation, k: int) -> list[int]:
    """The ``k`` input or rationale tokens with visible text that add most to the cosine: the ones a mark can
    show (template tokens and whitespace are listed on the ``strongest:`` line instead)."""
    ranked = side.strongest(len(side.pieces), ("input", "rationale"))
    return [i for i in ranked if side.pieces[i].strip()][:k]


def format_side(name: str, side: SideExplanation, *, k: int, colour: bool, width: int = 100) -> list[str]:
    strongest = set(visible_strongest(side, k))
    cut = " (cut to the prompt budget)" if side.input_truncated else ""
    lines = [f"{name}{cut}:"]
    lines += textwrap.wrap(marked_text(side, "input", strongest, colour=colour), width, initial_indent="    ", subsequent_indent="    ")
    if "rationale" in side.spans:
        flag = " (cut at the length limit)" if side.truncated else ""
        lines.append(f"  rationale{flag}:")
        body = marked_text(side, "rationale", strongest, colour=colour)
        lines += textwrap.wrap(body, width, initial_indent="    ", subsequent_indent="    ") or ["    (empty)"]
    else:
        lines.append("  (no rationale)")
    lines.append("  " + _strongest_line(side, k))
    return lines


def format_explanation(explained: SimilarityExplanation, *, k: int = 5, colour: bool = False, labels: tuple[str, str] = ("a", "b")) -> str:
    """The whole explanation as text: the cosine and its split, each side with its ``k`` strongest tokens
    marked, and the top token pairs (if computed)."""
    parts = explained.parts()
    shares = explained.shares()
    split = " · ".join(f"{name} {parts[name]:+.4f} ({100 * shares[name]:.0f}%)" for name in parts)
    lines = [f"cos({labels[0]}, {labels[1]}) = {explained.cosine:.4f}   {split}"]
    lines.append(f"    {split_bar(explained)}  I = input, t = template, R = rationale")
    lines += format_side(labels[0], explained.a, k=k, colour=colour)
    lines += format_side(labels[1], explained.b, k=k, colour=colour)
    if explained.top_pairs:
        lines.append("top token pairs:")
        for pair in explained.top_pairs:
            left, right = explained.a, explained.b
            lines.append(
                f'    "{shown(left.pieces[pair.a])}" ({labels[0]}, {left.spans[pair.a]}) x '
                f'"{shown(right.pieces[pair.b])}" ({labels[1]}, {right.spans[pair.b]})  {pair.contribution:+.5f}'
            )
    text = "\n".join(lines) + "\n"
    return text if colour else text.replace(_DIM, "").replace(_RESET, "")
