"""grace-explain, and grace-index search --explain / --html, end to end on the tiny model."""
from __future__ import annotations

import json

import pytest

from grace.cli.explain import main as explain_main
from grace.cli.index import main as index_main
from grace.embedding.encoder import GraceEncoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.model.loading import TINY_RANDOM
from grace.retrieval.index import RetrievalIndex, build_index

A, B = "The cat sat on the <b>mat</b>.", "A dog slept on the rug <|im_end|>"
BASE = ["--model", TINY_RANDOM, "--no-cache", "--max-new-tokens", "5"]


def test_grace_explain_prints_marked_tokens_and_the_split(capsys):
    assert explain_main([A, B, *BASE, "--top", "2", "--top-pairs", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cos(a, b) = ") and "input" in out and "rationale" in out
    assert out.count("[[") >= 2 and "\x1b[" not in out  # marks, no colour when not a terminal
    assert "<b>mat</b>" in out.replace("[[", "").replace("]]", "")  # markup shown literally
    assert out.count(" x ") == 3  # three token pairs


def test_grace_explain_json_numbers_are_exact_and_match_encode(capsys):
    assert explain_main([A, B, *BASE, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for side in ("a", "b"):
        assert sum(t["contribution"] for t in result[side]["tokens"]) == pytest.approx(result["cosine"], abs=1e-5)
    assert sum(result["parts"].values()) == pytest.approx(result["cosine"], abs=1e-5)
    encoder = GraceEncoder.from_pretrained(TINY_RANDOM)
    a, b = encoder.encode(A, max_new_tokens=5), encoder.encode(B, max_new_tokens=5)
    assert result["cosine"] == pytest.approx(float(a @ b), abs=1e-4)


def test_grace_explain_writes_a_self_contained_escaped_page(tmp_path, capsys):
    page = tmp_path / "why.html"
    assert explain_main([A, B, *BASE, "--html", str(page)]) == 0
    html = page.read_text()
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        tags: list = []
        text: list = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)

    parsed = Collect()
    parsed.feed(html)
    shown = "".join(parsed.text)
    assert "<b>mat</b>" in shown and "<|im_end|>" in shown and "b" not in parsed.tags  # literal text, not markup
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert f"page: {page}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["  ", "x"], "a: text 0 is empty"),
        (["x", "word " * 1100], "b is .* tokens, over the prompt budget"),
        (["x", "y", "--top", "-1"], "--top and --top-pairs must be >= 0"),
    ],
)
def test_grace_explain_bad_input_is_one_clear_line(args, message, capsys):
    assert explain_main([*args, *BASE]) == 1
    err = capsys.readouterr().err
    assert err.startswith("grace-explain: error: ") and err.count("\n") == 1
    import re

    assert re.search(message, err), err


CORPUS = ["cats sleep on mats", "stock markets fell", "dogs sleep on rugs", "rain fell all day"]


def test_index_search_explain_and_html(tmp_path, tiny, capsys):
    directory = tmp_path / "index"
    encoder = GraceEncoder(*tiny, document=EmbeddingConfig(decoding=Decoding(max_new_tokens=4)))
    build_index(encoder, CORPUS, directory, ids=[f"d{i}" for i in range(len(CORPUS))], source=TINY_RANDOM)
    page = tmp_path / "hits.html"
    assert index_main(["search", str(directory), "where do cats sleep?", "-k", "2", "--no-cache", "--explain", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert out.count("matched: query ") == 2 and "% of the cosine" in out
    html = page.read_text()
    assert html.count('<section class="pair">') == 2 and "hit 1: d" in html and "hit 2: d" in html
    # The explanation's cosine is the hit's score.
    result = RetrievalIndex.load(directory).search(encoder, ["where do cats sleep?"], k=1)[0]
    explained = encoder.explain_similarity(result.query, result.hits[0].document.text, role_a="query", role_b="document")
    assert explained.cosine == pytest.approx(result.hits[0].score, abs=1e-4)
