"""Terminal text and the HTML page of an explained similarity (grace.explanation), on hand-made explanations."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import torch

from grace.embedding.attribution import explain_pair, pooled_tokens
from grace.explanation.html import PageItem, render_page, write_page
from grace.explanation.terminal import format_explanation, split_bar
from grace.model.prompts import Span

I, T, R = int(Span.INPUT), int(Span.TEMPLATE), int(Span.RATIONALE)
EVIL = '<script>alert("x")</script> <|im_end|> & \x1b[31m'


def _explained(top_pairs: int = 2):
    a = pooled_tokens(torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0]]), torch.tensor([I, I, T, R]), "after_system")
    b = pooled_tokens(torch.tensor([[0.0, 1], [1, 0], [3, 1]]), torch.tensor([I, T, R]), "after_system")
    return explain_pair(
        a, b, "after_system", pieces=(["cats", EVIL, "\n", " purr"], ["dogs", "<|im_start|>", " bark"]),
        texts=("cats " + EVIL, "dogs"), rationales=(" purr", " bark"), top_pairs=top_pairs,
    )  # fmt: skip


def test_terminal_marks_the_strongest_tokens_without_colour():
    explained = _explained()
    text = format_explanation(explained, k=1, colour=False)
    assert "\x1b" not in text.replace("\\x1b", "")  # the ESC of the user text is shown escaped, never sent
    strongest = explained.a.pieces[explained.a.strongest(1)[0]].strip()
    assert f"[[{strongest}]]" in text
    assert f"cos(a, b) = {explained.cosine:.4f}" in text and "top token pairs:" in text
    assert "rationale" in text and "input" in text


def test_terminal_colour_uses_ansi_and_the_same_marks():
    text = format_explanation(_explained(), k=1, colour=True)
    assert "\x1b[1;30;43m[[" in text and "\x1b[0m" in text


def test_split_bar_is_proportional_to_the_positive_parts():
    explained = _explained()
    bar = split_bar(explained, width=40)
    parts = {k: max(v, 0) for k, v in explained.parts().items()}
    total = sum(parts.values())
    assert bar.count("R") == round(40 * parts["rationale"] / total) and bar.count("I") == round(40 * parts["input"] / total)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.urls = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_html_page_escapes_user_text_and_needs_no_network():
    page = render_page([PageItem(_explained())])
    parsed = _Collect()
    parsed.feed(page)
    assert "script" not in parsed.tags and parsed.urls == []  # no injected tag, nothing to fetch
    assert "link" not in parsed.tags and "img" not in parsed.tags
    shown = "".join(parsed.text)
    assert '<script>alert("x")</script>' in shown and "<|im_end|>" in shown  # shown literally
    assert "&lt;script&gt;" in page and "&lt;|im_start|&gt;" in page
    assert f"{_explained().cosine:.3f}" in shown and "rationale" in shown


def test_html_shading_follows_the_contributions():
    explained = _explained(top_pairs=0)
    page = render_page([PageItem(explained)])
    alphas = [float(a) for a in re.findall(r"rgba\(234, 88, 12, ([0-9.]+)\)\" title", page)]
    strongest = max(float(c) for c, s in zip(list(explained.a.contributions) + list(explained.b.contributions), explained.a.spans + explained.b.spans) if s != "template")
    assert max(alphas) == pytest.approx(0.85) and strongest > 0
    assert "<table>" not in page  # no pairs asked, no table


def test_write_page_refuses_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        write_page(tmp_path, [PageItem(_explained())])
    with pytest.raises(ValueError, match="nothing to render"):
        render_page([])
    path = write_page(tmp_path / "sub" / "x.html", [PageItem(_explained(), heading="hit 1 · <b>d1</b>")])
    assert "hit 1 · &lt;b&gt;d1&lt;/b&gt;" in path.read_text()
