import pytest

from grace.model.prompts import PromptBatch, PromptTemplate, Span, render_prompt
from grace.model.system_prompt import GRACE_SYSTEM_PROMPT


def full_render(tokenizer, text, system=GRACE_SYSTEM_PROMPT):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(rendered, add_special_tokens=False)


@pytest.mark.parametrize("text", ["hello world", "  leading spaces", "Line one.\nLine two!", "Ünïcödé ✓ 123"])
def test_pieces_tokenise_like_the_whole_rendered_prompt(tiny, tiny_template, text):
    prompt = render_prompt(tiny[1], text, tiny_template)
    assert prompt.ids == full_render(tiny[1], text.strip())


def test_span_labels_mark_system_text_and_template(tiny, tiny_template):
    tokenizer = tiny[1]
    prompt = render_prompt(tokenizer, "The cat sat on the mat.", tiny_template)
    by_span = lambda span: tokenizer.decode([i for i, s in zip(prompt.ids, prompt.spans) if s == span])  # noqa: E731
    assert GRACE_SYSTEM_PROMPT in by_span(Span.SYSTEM)
    assert by_span(Span.INPUT) == "The cat sat on the mat."
    assert "assistant" in by_span(Span.TEMPLATE)
    # The system block comes first and nothing after it is labelled system.
    first_other = next(i for i, s in enumerate(prompt.spans) if s != Span.SYSTEM)
    assert all(s != Span.SYSTEM for s in prompt.spans[first_other:])


def test_long_text_is_cut_in_the_user_text_never_in_the_template(tiny, tiny_template):
    tokenizer = tiny[1]
    budget = tiny_template.overhead + 10
    prompt = render_prompt(tokenizer, "word " * 500, tiny_template, max_prompt_tokens=budget)
    assert len(prompt.ids) == budget and prompt.input_truncated
    assert prompt.spans.count(Span.INPUT) == 10
    assert prompt.ids[-len(tiny_template.after_ids) :] == tiny_template.after_ids  # assistant header intact
    assert tokenizer.decode(prompt.ids).endswith("<|im_start|>assistant\n")


def test_short_text_is_not_truncated(tiny, tiny_template):
    prompt = render_prompt(tiny[1], "short", tiny_template, max_prompt_tokens=1024)
    assert not prompt.input_truncated


def test_budget_smaller_than_template_is_an_error(tiny, tiny_template):
    with pytest.raises(ValueError, match="leaves no room for text"):
        render_prompt(tiny[1], "text", tiny_template, max_prompt_tokens=tiny_template.overhead)


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_an_error(tiny, tiny_template, text):
    with pytest.raises(ValueError, match="empty text"):
        render_prompt(tiny[1], text, tiny_template)


def test_custom_system_prompt_is_used(tiny):
    template = PromptTemplate.build(tiny[1], "Summarise.")
    assert tiny[1].decode(template.system_ids).count("Summarise.") == 1
    assert render_prompt(tiny[1], "x y", template).ids == full_render(tiny[1], "x y", "Summarise.")


def test_tokenizer_without_chat_template_is_rejected(tiny):
    import copy

    tokenizer = copy.deepcopy(tiny[1])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        PromptTemplate.build(tokenizer, GRACE_SYSTEM_PROMPT)


def test_collate_left_pads(tiny, tiny_template):
    prompts = [render_prompt(tiny[1], t, tiny_template) for t in ["a", "a much longer text than the first one"]]
    batch = PromptBatch.collate(prompts, pad_id=tiny[1].pad_token_id)
    short = len(prompts[0].ids)
    width = batch.input_ids.shape[1]
    assert batch.attention_mask[0, : width - short].sum() == 0
    assert batch.input_ids[0, width - short :].tolist() == prompts[0].ids
    assert (batch.spans[0, : width - short] == Span.PAD).all()
    assert batch.attention_mask[1].all()
