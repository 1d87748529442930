"""The shared prefix: found from the prompts themselves, and equal to the same tokens in a plain forward."""
import pytest
import torch

from grace.generation.prefix import common_prefix_length, compute_prefix
from grace.model.forward import decoder_forward, position_ids
from grace.model.pooling import pooling_mask
from grace.model.prompts import Prompt, PromptBatch, Span, render_prompt

S, TPL, IN = int(Span.SYSTEM), int(Span.TEMPLATE), int(Span.INPUT)


def prompt(ids, spans):
    return Prompt(ids, spans, False)


def test_the_common_run_of_tokens_and_spans():
    a = prompt([1, 2, 3, 4, 5], [S, S, TPL, IN, TPL])
    b = prompt([1, 2, 3, 9, 5, 6], [S, S, TPL, IN, IN, TPL])
    assert common_prefix_length([a, b]) == 3


def test_same_tokens_with_other_spans_are_not_shared():
    a = prompt([1, 2, 3, 4], [S, S, TPL, IN])
    b = prompt([1, 2, 3, 4], [S, S, IN, IN])
    assert common_prefix_length([a, b]) == 2


def test_every_prompt_keeps_a_token_of_its_own():
    a = prompt([1, 2, 3], [S, TPL, IN])
    assert common_prefix_length([a]) == 2
    assert common_prefix_length([a, a, a]) == 2
    assert common_prefix_length([a, prompt([1, 2], [S, TPL])]) == 1
    assert common_prefix_length([]) == 0


def test_real_prompts_share_the_system_block_and_template(tiny, tiny_template):
    tokenizer = tiny[1]
    prompts = [render_prompt(tokenizer, text, tiny_template) for text in ("A cat.", "Why is the sky blue?")]
    assert common_prefix_length(prompts) == len(tiny_template.system_ids) + len(tiny_template.before_ids)


@pytest.mark.parametrize("pooling", ["after_system", "input", "last_token"])
def test_prefix_states_and_pool_equal_a_plain_forward(tiny, tiny_template, pooling):
    model, tokenizer = tiny
    texts = ("A cat.", "Why is the sky blue?")
    prompts = [render_prompt(tokenizer, text, tiny_template) for text in texts]
    length = common_prefix_length(prompts)
    prefix = compute_prefix(model, prompts[1], length, pooling)

    batch = PromptBatch.collate(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        hidden, cache = decoder_forward(model, batch.input_ids, batch.attention_mask, position_ids(batch.attention_mask), use_cache=True)
    row = 1  # the longer prompt: no left padding, so its prefix sits in columns [0, length)
    assert torch.allclose(prefix.keys_values[0][0][0], cache.layers[0].keys[row, :, :length], atol=1e-5)
    assert torch.allclose(prefix.keys_values[-1][1][0], cache.layers[-1].values[row, :, :length], atol=1e-5)
    pooled = pooling_mask(batch.spans[row : row + 1, :length], pooling)[0] if pooling != "last_token" else torch.zeros(length, dtype=torch.bool)
    assert prefix.pooled_count == int(pooled.sum())
    assert torch.allclose(prefix.pooled_sum, hidden[row, :length][pooled].sum(dim=0), atol=1e-5)
    if pooling == "after_system":
        assert prefix.pooled_count == len(tiny_template.before_ids) > 0  # the template tokens after the system block
