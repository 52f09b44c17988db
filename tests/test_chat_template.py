"""Chat rendering: Python rendering == the Jinja template, and the exact assistant-only loss mask."""
from __future__ import annotations

import pytest

from stages.data.chat import IGNORE, check_roles, render_prompt, render_text, render_training

CONVERSATION = [
    {"role": "system", "content": "You are Tiny."},
    {"role": "user", "content": "What is 123 * 456?"},
    {"role": "assistant", "content": "I will use the calculator.\n<|calc|>123 * 456<|/calc|><|result|>56088<|/result|>\nAnswer: 56088"},
    {"role": "user", "content": "And 9.9 vs 9.11?"},
    {"role": "assistant", "content": "Align: 9.90 and 9.11.\nAnswer: 9.9"},
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_exact_assistant_only_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = render_training(tok, CONVERSATION, max_length=1000)
    # (text, trained) written out by hand for this conversation
    segments = [
        ("<|bos|><|system|>You are Tiny.<|end|><|user|>What is 123 * 456?<|end|><|assistant|>", False),
        ("I will use the calculator.\n<|calc|>123 * 456<|/calc|>", True),
        ("<|result|>56088<|/result|>", False),
        ("\nAnswer: 56088<|end|>", True),
        ("<|user|>And 9.9 vs 9.11?<|end|><|assistant|>", False),
        ("Align: 9.90 and 9.11.\nAnswer: 9.9<|end|>", True),
    ]
    want_ids, want_labels = [], []
    for text, trained in segments:
        piece = _ids(tok, text)
        want_ids += piece
        want_labels += piece if trained else [IGNORE] * len(piece)
    assert ids == want_ids
    assert labels == want_labels
    trained_text = tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=False)
    assert "56088<|/result|>" not in trained_text and "You are Tiny" not in trained_text
    assert trained_text.count("<|end|>") == 2 and "<|assistant|>" not in trained_text


def test_matches_jinja_template_and_its_assistant_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = render_training(tok, CONVERSATION, max_length=1000)
    ref = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == list(ref["input_ids"])
    assert render_text(tok, CONVERSATION) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    # the template marks whole assistant turns; ours is the same minus the tool-result span
    result_ids = set(_ids(tok, "<|result|>56088<|/result|>"))
    ours = [int(l != IGNORE) for l in labels]
    theirs = list(ref["assistant_masks"])
    diff = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert diff and all(theirs[i] == 1 and ours[i] == 0 and ids[i] in result_ids for i in diff)
    assert len(diff) == len(_ids(tok, "<|result|>56088<|/result|>"))


def test_render_prompt_ends_with_generation_header(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = render_prompt(tok, CONVERSATION[:2])
    assert prompt == list(tok.apply_chat_template(CONVERSATION[:2], tokenize=True, add_generation_prompt=True)["input_ids"])
    assert prompt[0] == tok.bos_token_id and prompt[-1] == tok.convert_tokens_to_ids("<|assistant|>")


def test_too_long_is_none_and_malformed_raises(tiny_tokenizer):
    assert render_training(tiny_tokenizer, CONVERSATION, max_length=20) is None
    with pytest.raises(ValueError, match="last turn"):
        render_training(tiny_tokenizer, CONVERSATION[:2], max_length=1000)
    with pytest.raises(ValueError, match="out of order"):
        render_training(tiny_tokenizer, [CONVERSATION[2], CONVERSATION[1]], max_length=1000)


@pytest.mark.parametrize("messages, problem", [
    ([], "no messages"),
    ([{"role": "robot", "content": "hi"}], "unknown role"),
    ([{"role": "user", "content": "  "}], "empty content"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "out of order"),
    ([{"role": "system", "content": "s"}], "only a system"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "out of order"),
])
def test_check_roles(messages, problem):
    assert problem in check_roles(messages)
    assert check_roles(CONVERSATION) is None
