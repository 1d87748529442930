"""Every cache key and recorded revision covers everything that changes an embedding: the weights, the
tokenizer, its chat template, the embedding settings and the generation settings a model directory carries
(``generation_config.json``'s EOS ids / stop tokens). Each is changed alone, and the embedding cache, the
mteb revision, the index manifest and grace-encode's resume record must all see it."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from grace.cli.encode import _job
from grace.embedding.cache import EmbeddingCache
from grace.embedding.encoder import GraceEncoder, generation_fingerprint
from grace.embedding.pipeline import Decoding, EmbeddingConfig
from grace.evaluation.adapter import model_revision
from grace.generation.rollout import stop_token_ids
from grace.retrieval.index import build_index
from grace.retrieval.manifest import EncoderMismatchError

TEXTS = ["How do plants make food?", "The stock market fell sharply today.", "A cat sat on the mat."]
SETTINGS = EmbeddingConfig(rationale=True, decoding=Decoding(max_new_tokens=6))


def count_forward_calls(encoder: GraceEncoder) -> list[int]:
    """Grows by one at every decoder call: empty after an encode means the cache served everything."""
    calls: list[int] = []
    encoder.model.get_decoder().register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def other_weights(model, tokenizer):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    return changed, tokenizer


def other_tokenizer(model, tokenizer):
    changed = copy.deepcopy(tokenizer)
    changed.add_special_tokens({"additional_special_tokens": ["<|grace_test|>"]})
    return model, changed


def other_chat_template(model, tokenizer):
    changed = copy.deepcopy(tokenizer)
    changed.chat_template = tokenizer.chat_template.replace("<|im_start|>", "\n<|im_start|>", 1)
    return model, changed


def other_stop_token_list(model, tokenizer):
    """generation_config.json gains a stop token (the list form Llama 3 and Qwen use)."""
    changed = copy.deepcopy(model)
    changed.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("!")]
    return changed, tokenizer


def other_single_eos(model, tokenizer):
    """generation_config.json's eos_token_id replaced by another single id (not the tokenizer's)."""
    changed = copy.deepcopy(model)
    changed.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(".")
    return changed, tokenizer


CHANGES = [other_weights, other_tokenizer, other_chat_template, other_stop_token_list, other_single_eos]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_the_embedding_cache_misses_after_each_change(tmp_path, tiny, change):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    GraceEncoder(*tiny, document=SETTINGS, cache=cache).encode(TEXTS)
    same = GraceEncoder(*tiny, document=SETTINGS, cache=cache)
    calls = count_forward_calls(same)
    same.encode(TEXTS)
    assert calls == []  # the control: nothing changed, everything is served from the cache
    changed = GraceEncoder(*change(*tiny), document=SETTINGS, cache=cache)
    calls = count_forward_calls(changed)
    changed.encode(TEXTS)
    assert calls, f"{change.__name__}: the cache served entries made before the change"


def test_the_embedding_cache_misses_after_a_settings_change(tmp_path, tiny):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    encoder = GraceEncoder(*tiny, document=SETTINGS, cache=cache)
    encoder.encode(TEXTS)
    calls = count_forward_calls(encoder)
    encoder.encode(TEXTS, max_new_tokens=7)
    assert calls


def test_a_stop_token_added_to_generation_config_json_is_not_served_the_old_rationale(tmp_path, tiny):
    """The issue's case: a saved model directory whose generation_config.json gains a stop token writes a
    different rationale, and a cache filled before must not serve the old one."""
    model, tokenizer = tiny
    saved = tmp_path / "model"  # a plain model directory, as a hub download or an exported model is
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    cache = tmp_path / "cache.sqlite"
    before = GraceEncoder.from_pretrained(saved, document=SETTINGS, cache=cache).encode_with_rationales(TEXTS)
    # The first token of the first rationale becomes a stop token, so that rationale must end at once. The
    # rationale is text: every prefix of it that is one token is a candidate for that first token.
    first = before.rationales[0]
    stops = {ids[0] for k in range(1, len(first) + 1) if len(ids := tokenizer(first[:k], add_special_tokens=False).input_ids) == 1}
    assert stops
    path = saved / "generation_config.json"
    config = json.loads(path.read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, *sorted(stops)]
    path.write_text(json.dumps(config))
    reloaded = GraceEncoder.from_pretrained(saved, document=SETTINGS, cache=cache)
    assert stops <= set(stop_token_ids(reloaded.model, reloaded.tokenizer))
    after = reloaded.encode_with_rationales(TEXTS)
    fresh = GraceEncoder.from_pretrained(saved, document=SETTINGS).encode_with_rationales(TEXTS)  # no cache at all
    assert after.rationales == fresh.rationales and np.array_equal(after.embeddings, fresh.embeddings)
    assert after.rationales[0] != before.rationales[0]


def test_the_generation_fingerprint_is_the_stop_token_set(tiny):
    model, tokenizer = tiny
    base = generation_fingerprint(model, tokenizer)
    same = copy.deepcopy(model)
    same.generation_config.eos_token_id = [tokenizer.eos_token_id]  # the same set, written as a list
    assert generation_fingerprint(same, tokenizer) == base
    assert generation_fingerprint(*other_stop_token_list(model, tokenizer)) != base
    # Computed at each call: a generation_config changed in place on a live encoder is seen at once.
    encoder = GraceEncoder(copy.deepcopy(model), tokenizer)
    before = encoder.generation_fingerprint
    encoder.model.generation_config.eos_token_id = [tokenizer.eos_token_id, 5]
    assert encoder.generation_fingerprint != before


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_the_mteb_revision_and_the_encode_record_change_with_each_change(tiny, change):
    configs = {"document": SETTINGS, "query": SETTINGS}
    base = GraceEncoder(*tiny, document=SETTINGS)
    changed = GraceEncoder(*change(*tiny), document=SETTINGS)
    assert model_revision(GraceEncoder(*tiny, document=SETTINGS), configs) == model_revision(base, configs)
    assert model_revision(changed, configs) != model_revision(base, configs)
    assert _job(changed, [], "document", 8) != _job(base, [], "document", 8)  # grace-encode will not resume across it


@pytest.mark.parametrize("change", [other_tokenizer, other_chat_template, other_stop_token_list], ids=lambda f: f.__name__)
def test_an_index_refuses_an_encoder_with_the_same_weights_but_another_tokenizer_or_stop_tokens(tmp_path, tiny, change):
    encoder = GraceEncoder(*tiny, document=SETTINGS, query=SETTINGS)
    index = build_index(encoder, TEXTS, tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())["encoder"]
    assert manifest["tokenizer"] == encoder.tokenizer_fingerprint
    assert manifest["generation"] == encoder.generation_fingerprint
    index.search(GraceEncoder(*tiny, document=SETTINGS, query=SETTINGS), TEXTS[0])  # the control
    changed = GraceEncoder(*change(*tiny), document=SETTINGS, query=SETTINGS)
    assert changed.fingerprint == encoder.fingerprint  # the weights alone would not tell
    with pytest.raises(EncoderMismatchError, match="tokenizer or chat template|stop tokens"):
        index.search(changed, TEXTS[0])
    index.search(changed, TEXTS[0], same_weights=False)  # the documented way past the check
