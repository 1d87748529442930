"""GGUF files as plain transformers models: converted once, then loaded like any model directory.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=name)``, with the ``gguf`` package) by
de-quantising every tensor to float and rebuilding the tokenizer from the file's metadata: ~30 s for
SmolLM2-135M on two cores, minutes for larger models. So the first load saves a plain safetensors copy
(weights and tokenizer) under the cache, and every later load reads that copy (~2 s).

The copy is keyed by the GGUF file's content (a hash), not its path: a file that is replaced or edited is
converted again, and the same file under another name or path (a copy, a symlink) shares one conversion.
Hashing reads the file once per process (~0.25 s per 100 MB); the hash is remembered for as long as the
file's size and modification time stay the same.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def converted_gguf_dir(gguf: Path, root: Path) -> Path:
    """A plain safetensors copy of ``gguf`` under ``root``, converted on first use.

    The copy is written to a temporary directory and renamed into place, so a crash or a second process
    converting at the same time never leaves a half-written model behind.
    """
    gguf = Path(gguf)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem)[:48]
    target = root / f"gguf-{stem}-{gguf_digest(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Without these the saved copy claims to be GGUF-quantised and reloads through the slow path.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def gguf_digest(path: Path) -> str:
    """Hex blake2b-128 of the file's bytes (the link target's, for a symlink)."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    return _digest(str(real), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """Keyed by size, modification time and inode too: a rewritten file is hashed again."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
