"""GraceEncoder as users meet it: load a checkpoint in a fresh process, encode, explain, save, reload.

The fresh-process tests run a separate Python interpreter, so nothing cached in this one (the model
object, the tokenizer, the templates) can make a broken save/load path look fine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grace.embedding.cache as cache_module
import grace.storage.staging as staging_module
from grace.embedding.cache import EmbeddingCache, canonical_config
from grace.embedding.encoder import GraceEncoder
from grace.embedding.encoder_files import ENCODER_CONFIG_FILE, model_fingerprint, save_encoder
from grace.embedding.pipeline import Decoding, EmbeddingConfig, embed
from grace.generation.options import GenerationOptions
from grace.model.loading import TINY_RANDOM, load_policy

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "How do plants make food?"]
DOCUMENT = EmbeddingConfig(rationale=False)  # cheap indexing: no rationale for documents
QUERY = EmbeddingConfig(decoding=Decoding(max_new_tokens=4))

# Runs in a new interpreter: load whatever directory argv[1] names, encode and explain, print JSON.
FRESH_SESSION = """
import json, sys, torch
torch.set_num_threads(1)
from grace.embedding.encoder import GraceEncoder
encoder = GraceEncoder.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({
    "fingerprint": encoder.fingerprint,
    "document": encoder.encode(texts).tolist(),
    "query": encoder.encode(texts, role="query").tolist(),
    "explain_document": encoder.explain(texts),
    "explain_query": encoder.explain(texts, role="query"),
    "settings": {role: config.to_dict() for role, config in encoder.configs.items()},
}))
"""


def run_fresh_session(source: Path, texts: list[str], timeout: int = 120) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_SESSION, str(source), json.dumps(texts)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_newest_checkpoint_of_a_training_run_loads_and_encodes_in_a_fresh_session(tmp_path, tiny):
    model, tokenizer = tiny
    run = tmp_path / "run"
    older, _ = load_policy(TINY_RANDOM, seed=1)
    save_encoder(run / "checkpoints" / "step-2", older, tokenizer, DOCUMENT, QUERY)
    save_encoder(run / "checkpoints" / "step-10", model, tokenizer, DOCUMENT, QUERY)  # newest: 10 > 2 numerically

    fresh = run_fresh_session(run, TEXTS)

    here = GraceEncoder(model, tokenizer, document=DOCUMENT, query=QUERY)
    assert fresh["fingerprint"] == here.fingerprint  # step-10, not step-2
    assert fresh["settings"] == {"document": DOCUMENT.to_dict(), "query": QUERY.to_dict()}
    np.testing.assert_allclose(fresh["document"], here.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(fresh["query"], here.encode(TEXTS, role="query"), atol=1e-5)
    assert fresh["explain_document"] == ["", "", ""]  # documents are embedded without a rationale
    assert fresh["explain_query"] == here.explain(TEXTS, role="query") and all(fresh["explain_query"])


def test_save_then_reload_gives_identical_embeddings_and_settings(tmp_path, tiny):
    encoder = GraceEncoder(*tiny, document=DOCUMENT, query=QUERY, name="my-encoder")
    before = encoder.encode_with_rationales(TEXTS, role="query")
    saved = encoder.save(tmp_path / "encoder")
    assert (saved / "model.safetensors").is_file() and (saved / "grace_encoder.json").is_file()

    reloaded = GraceEncoder.from_pretrained(saved)
    after = reloaded.encode_with_rationales(TEXTS, role="query")
    assert np.array_equal(before.embeddings, after.embeddings)
    assert before.rationales == after.rationales
    assert reloaded.configs == encoder.configs and reloaded.name == "my-encoder"
    assert reloaded.fingerprint == encoder.fingerprint
    assert np.array_equal(reloaded.encode(TEXTS), encoder.encode(TEXTS))


@pytest.mark.parametrize("role", ["document", "query"])
def test_encoder_output_is_the_shared_embed_functions_output(tiny, role):
    """Training, evaluation and export embed through grace.embedding.pipeline.embed: the encoder adds nothing."""
    encoder = GraceEncoder(*tiny, document=DOCUMENT, query=QUERY, batch_size=2)
    ours = encoder.encode_with_rationales(TEXTS, role=role)
    reference = embed(*tiny, TEXTS, DOCUMENT if role == "document" else QUERY, batch_size=2)
    assert np.array_equal(ours.embeddings, reference.embeddings.numpy())
    assert ours.rationales == reference.rationales
    assert np.array_equal(ours.truncated, reference.truncated.numpy())


def test_query_and_document_settings_are_separate(tiny):
    encoder = GraceEncoder(*tiny, document=DOCUMENT, query=QUERY)
    assert encoder.explain(TEXTS) == ["", "", ""]
    assert all(encoder.explain(TEXTS, role="query"))
    documents, queries = encoder.encode(TEXTS), encoder.encode(TEXTS, role="query")
    assert not np.allclose(documents, queries, atol=1e-3)  # a rationale changes what is pooled
    # An override applies to one call and one role only.
    assert all(encoder.explain(TEXTS, rationale=True, decoding=Decoding(max_new_tokens=2)))
    assert encoder.explain(TEXTS) == ["", "", ""]
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def count_forward_calls(encoder: GraceEncoder) -> list[int]:
    """A list that grows by one at every model call: empty after an encode means the cache served it all.
    The hook sits on the decoder: rollouts call it directly (for the hidden states), not the model."""
    calls: list[int] = []
    encoder.model.get_decoder().register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_cached_embeddings_equal_computed_ones_and_skip_the_model(tmp_path, tiny):
    cache = tmp_path / "cache.sqlite"
    first_encoder = GraceEncoder.from_pretrained(TINY_RANDOM, query=QUERY, cache=cache)
    first = first_encoder.encode_with_rationales(TEXTS, role="query")
    second_encoder = GraceEncoder.from_pretrained(TINY_RANDOM, query=QUERY, cache=cache)  # a new model object
    calls = count_forward_calls(second_encoder)
    second = second_encoder.encode_with_rationales(TEXTS, role="query")
    assert calls == []
    assert np.array_equal(first.embeddings, second.embeddings) and first.rationales == second.rationales


def test_generation_options_are_neither_saved_nor_part_of_the_cache_key(tmp_path, tiny):
    """How rationales are computed is not an embedding setting: a cache filled by the plain loop serves
    the engine, and a saved encoder records nothing of it."""
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    plain = GenerationOptions(shared_prefix=False, continuous=False)
    first = GraceEncoder(*tiny, query=QUERY, cache=cache, generation=plain).encode(TEXTS, role="query")
    engine = GraceEncoder(*tiny, query=QUERY, cache=cache, generation=GenerationOptions(compile=True))
    calls = count_forward_calls(engine)
    assert np.array_equal(engine.encode(TEXTS, role="query"), first) and calls == []
    saved = engine.save(tmp_path / "encoder")
    assert "compile" not in (saved / ENCODER_CONFIG_FILE).read_text()
    assert GraceEncoder.from_pretrained(saved).generation == GenerationOptions()


def test_canonical_config_resets_only_what_cannot_change_an_embedding():
    sampled = Decoding(temperature=0.7, top_p=0.9, seed=3, num_samples=2, max_new_tokens=9)
    assert canonical_config(EmbeddingConfig(rationale=False, decoding=sampled)) == EmbeddingConfig(rationale=False)
    greedy = EmbeddingConfig(decoding=Decoding(top_p=0.5, seed=7, max_new_tokens=9))
    assert canonical_config(greedy) == EmbeddingConfig(decoding=Decoding(max_new_tokens=9))
    assert canonical_config(EmbeddingConfig(decoding=sampled)) == EmbeddingConfig(decoding=sampled)


def test_settings_that_cannot_change_an_embedding_share_cache_entries(tmp_path, tiny):
    encoder = GraceEncoder(*tiny, document=DOCUMENT, query=QUERY, cache=EmbeddingCache(tmp_path / "cache.sqlite"))
    first = encoder.encode(TEXTS, role="query")
    cached = encoder.encode(TEXTS, role="document")
    calls = count_forward_calls(encoder)
    assert np.array_equal(encoder.encode(TEXTS, role="query", decoding={"seed": 5, "top_p": 0.5}), first)  # greedy
    assert np.array_equal(encoder.encode(TEXTS, decoding=Decoding(temperature=1.0, max_new_tokens=99)), cached)
    assert calls == []
    encoder.encode(TEXTS, role="query", decoding={"max_new_tokens": 5})  # a real change is a real miss
    assert calls


def test_cache_entries_are_keyed_by_tokenizer_and_embed_version(tmp_path, tiny, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    GraceEncoder(*tiny, document=DOCUMENT, cache=cache).encode(TEXTS)
    saved = GraceEncoder(*tiny, document=DOCUMENT).save(tmp_path / "encoder")
    reloaded = GraceEncoder.from_pretrained(saved)
    reloaded.cache = cache
    calls = count_forward_calls(reloaded)
    reloaded.encode(TEXTS)
    assert calls == []  # a saved and reloaded tokenizer hashes the same

    model, tokenizer = load_policy(TINY_RANDOM)  # the same weights (same seed) ...
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")  # ... other prompt
    other_template = GraceEncoder(model, tokenizer, document=DOCUMENT, cache=cache)
    assert other_template.fingerprint == reloaded.fingerprint
    calls = count_forward_calls(other_template)
    other_template.encode(TEXTS[:1])
    assert calls

    monkeypatch.setattr(cache_module, "EMBED_VERSION", cache_module.EMBED_VERSION + 1)
    calls = count_forward_calls(reloaded)
    reloaded.encode(TEXTS[:1])
    assert calls  # a changed embed path never serves old entries


@pytest.mark.slow
def test_packaged_model_checkpoint_loads_and_explains_in_a_fresh_session(tmp_path, smollm2):
    model, tokenizer = smollm2
    short = EmbeddingConfig(decoding=Decoding(max_new_tokens=12))
    save_encoder(tmp_path / "run" / "checkpoints" / "step-1", model, tokenizer, short, short)

    fresh = run_fresh_session(tmp_path / "run", TEXTS[:2], timeout=300)

    vectors = np.asarray(fresh["document"])
    assert vectors.shape == (2, 576)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    torch.set_num_threads(1)  # the same arithmetic as the fresh session
    here = GraceEncoder(model, tokenizer, document=short).encode_with_rationales(TEXTS[:2])
    np.testing.assert_allclose(vectors, here.embeddings, atol=1e-4)
    assert fresh["explain_document"] == here.rationales
    assert all(len(r.split()) >= 2 for r in here.rationales), here.rationales  # real words from a real model


# ---------------------------------------------------------------------- saving never destroys what is not ours


@pytest.mark.parametrize("make", [
    lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("{}\n")),  # a training run, say
    lambda d: d.write_text("a file"),
])
def test_save_refuses_a_path_that_is_not_a_saved_encoder(tmp_path, tiny, make):
    target = tmp_path / "run"
    make(target)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"run exists and is not a saved GRACE encoder \(it has no grace_encoder"):
        GraceEncoder(*tiny).save(target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing removed, no staging debris


def test_save_into_an_empty_directory(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    saved = GraceEncoder(*tiny).save(tmp_path / "empty")
    assert (saved / ENCODER_CONFIG_FILE).is_file()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "retired-directory"])
def test_save_replaces_an_encoder_and_the_target_always_holds_one(tmp_path, tiny, monkeypatch, exchange):
    target = tmp_path / "encoder"
    GraceEncoder(*tiny).save(target)
    (target / "stale.txt").write_text("from the old save")
    newer = GraceEncoder(*load_policy(TINY_RANDOM, seed=1))
    if not exchange:
        monkeypatch.setattr(staging_module, "_exchange", lambda a, b: False)
    removed_while: list[str] = []
    rmtree = shutil.rmtree

    def spying_rmtree(path, *args, **kwargs):
        removed_while.append(json.loads((target / ENCODER_CONFIG_FILE).read_text())["fingerprint"])
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(staging_module.shutil, "rmtree", spying_rmtree)
    newer.save(target)

    assert removed_while == [newer.fingerprint]  # the old copy is removed only once the new one is in place
    assert GraceEncoder.from_pretrained(target).fingerprint == newer.fingerprint
    assert not (target / "stale.txt").exists()  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["encoder"]  # no staging or retired directory left


# ---------------------------------------------------------------------- fingerprint


class ScaledLinear(torch.nn.Module):
    """Has a 0-dim buffer, as some models do (a scale, a step counter)."""

    def __init__(self, rows: int = 2, columns: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(rows * columns, dtype=torch.float32).view(rows, columns))
        self.register_buffer("scale", torch.tensor(2.0))


def test_fingerprint_covers_scalar_tensors_shapes_and_dtypes():
    base = model_fingerprint(ScaledLinear())
    assert base == model_fingerprint(ScaledLinear())
    rescaled = ScaledLinear()
    rescaled.scale.fill_(3.0)
    assert model_fingerprint(rescaled) != base
    assert model_fingerprint(ScaledLinear(3, 2)) != base  # same bytes, other shape
    assert model_fingerprint(ScaledLinear().to(torch.float64)) != base


# ---------------------------------------------------------------------- reading saved settings


def edit_settings(directory: Path, **changes) -> None:
    path = directory / ENCODER_CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_settings_of_a_newer_format_are_refused_with_a_clear_message(tmp_path, tiny):
    saved = GraceEncoder(*tiny).save(tmp_path / "encoder")
    edit_settings(saved, format_version=99)
    with pytest.raises(ValueError, match=r"by a newer grace \(format version 99; this one reads up to 2\): upgrade"):
        GraceEncoder.from_pretrained(saved)
    edit_settings(saved, format_version="two")
    with pytest.raises(ValueError, match=r"not a valid GRACE encoder config \(unknown format_version 'two'\)"):
        GraceEncoder.from_pretrained(saved)


def test_weights_changed_after_saving_are_reported_when_fingerprinted(tmp_path, tiny, caplog):
    saved = GraceEncoder(*tiny).save(tmp_path / "encoder")
    settings = json.loads((saved / ENCODER_CONFIG_FILE).read_text())
    assert settings["dtype"] == "float32" and settings["format_version"] == 2
    with caplog.at_level("WARNING", logger="grace.embedding.encoder"):
        assert GraceEncoder.from_pretrained(saved).fingerprint == settings["fingerprint"]
        GraceEncoder.from_pretrained(saved, dtype="bfloat16").fingerprint  # another dtype hashes differently
    assert caplog.records == []

    edit_settings(saved, fingerprint="0" * 32)  # as if the weight files had been replaced
    with caplog.at_level("WARNING", logger="grace.embedding.encoder"):
        GraceEncoder.from_pretrained(saved).fingerprint
    assert "records weights 00000000000000000000000000000000, but the loaded weights hash to" in caplog.text


def test_decoding_settings_may_be_given_flat_and_unknown_names_are_refused(tiny):
    encoder = GraceEncoder(*tiny, document=QUERY)
    flat = encoder.config_for("document", max_new_tokens=2, temperature=0.5, seed=3, rationale=True)
    assert flat.decoding == Decoding(max_new_tokens=2, temperature=0.5, seed=3)
    assert encoder.config_for("document", decoding={"max_new_tokens": 2}).decoding == Decoding(max_new_tokens=2)
    assert encoder.config_for("document", decoding=Decoding(temperature=1.0), seed=9).decoding == Decoding(1.0, seed=9)
    assert encoder.explain(TEXTS[:1], max_new_tokens=2) == encoder.explain(TEXTS[:1], decoding={"max_new_tokens": 2})
    with pytest.raises(ValueError, match=r"unknown setting 'max_tokens': valid keys are decoding, max_new_tokens, "):
        encoder.encode(TEXTS, max_tokens=8)
    with pytest.raises(ValueError, match=r"unknown decoding setting 'rationale': valid keys are max_new_tokens, "):
        encoder.encode(TEXTS, decoding={"rationale": False})
