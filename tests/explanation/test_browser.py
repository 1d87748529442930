"""The explanation page as a browser shows it: headless Chromium renders it to a screenshot and a DOM.

Marked ``browser`` (``make test-fast`` skips it; CI installs Debian's chromium and runs it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from grace.embedding.attribution import explain_pair, pooled_tokens
from grace.explanation.html import PageItem, write_page
from grace.model.prompts import Span

pytestmark = pytest.mark.browser
WIDTH, HEIGHT = 1280, 900
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does it in CI)")
    return found


def _page(tmp_path: Path) -> Path:
    I, T, R = int(Span.INPUT), int(Span.TEMPLATE), int(Span.RATIONALE)
    generator = torch.Generator().manual_seed(0)
    a = pooled_tokens(torch.randn(6, 8, generator=generator) + 1, torch.tensor([T, I, I, I, R, R]), "after_system")
    b = pooled_tokens(torch.randn(5, 8, generator=generator) + 1, torch.tensor([T, I, I, R, R]), "after_system")
    explained = explain_pair(
        a, b, "after_system", top_pairs=3,
        pieces=(["<|im_start|>", "Photosynthesis", " feeds", " <b>plants</b>", " Light", " energy"],
                ["<|im_start|>", "Plants", " grow", " Sun", "light"]),
    )  # fmt: skip
    return write_page(tmp_path / "page.html", [PageItem(explained)])


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"  # a fresh profile each run: nothing from an earlier session
    return subprocess.run([_chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_page(tmp_path):
    page = _page(tmp_path)
    shot = tmp_path / "shot.png"
    result = _run([f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image.std() > 10  # not blank
    # The warm shading of tokens and the parts bar are drawn: pixels far from grey, in numbers.
    saturated = (image.max(axis=-1) - image.min(axis=-1)) > 80
    assert saturated.mean() > 0.002
    dom = _run(["--dump-dom", page.as_uri()], tmp_path).stdout
    assert "Photosynthesis" in dom and "cosine similarity" in dom
    assert "&lt;b&gt;plants&lt;/b&gt;" in dom and "<b>plants" not in dom  # escaped, not markup
