"""Chat rendering: messages -> token ids for generation prompts and for training (with the loss mask).

    from stages.data.chat import render_prompt, render_training
    ids = render_prompt(tok, [{"role": "user", "content": "What is 2 + 3?"}])   # ends with <|assistant|>
    ids, labels = render_training(tok, messages, max_length=256)                # labels -100 off assistant
    ids, mask = render_completion(tok, prompt_text, completion)                 # mask 0 on prompt, tool output

The format (the same as stages/data/chat_template.jinja, checked token for token in tests):
    <|bos|><|system|>S<|end|><|user|>U<|end|><|assistant|>A<|end|>...
Loss falls on assistant content and its closing <|end|> only: never on the system/user turns, the
<|assistant|> header, or calculator output <|result|>...<|/result|> (inserted by the tool at inference,
so the model must not learn to write it). The text is cut only at special tokens, so tokenizing the
pieces one by one gives exactly the ids of tokenizing the whole conversation.
"""
from __future__ import annotations

import re

from stages.data.special_tokens import ASSISTANT, END, END_RESULT, RESULT

ROLES = ("system", "user", "assistant")
IGNORE = -100
_RESULT_SPAN = re.compile(re.escape(RESULT) + r".*?(?:" + re.escape(END_RESULT) + r"|$)", re.DOTALL)


def check_roles(messages: list[dict]) -> str | None:
    """None if the conversation is well ordered, else "kind: detail" saying what is wrong.

    Expected: an optional leading system turn, then user/assistant alternating, starting with user."""
    if not messages:
        return "no messages"
    roles = [m.get("role") for m in messages]
    for i, role in enumerate(roles):
        if role not in ROLES:
            return f"unknown role: {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(messages[i].get("content"), str) or not messages[i]["content"].strip():
            return f"empty content: turn {i} ({role})"
    body = roles[1:] if roles[0] == "system" else roles
    if not body:
        return "only a system turn"
    for i, role in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            return f"roles out of order: turn {i + len(roles) - len(body)} is {role}, expected {want}"
    return None


def _pieces(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """(text, trained) pieces whose concatenation is the rendered conversation."""
    pieces: list[tuple[str, bool]] = [(tokenizer.bos_token or "", False)]
    for message in messages:
        role, content = message["role"], message["content"]
        if role != "assistant":
            pieces.append((f"<|{role}|>{content}{END}", False))
            continue
        pieces.append((ASSISTANT, False))
        cursor = 0
        for span in _RESULT_SPAN.finditer(content):  # tool output: in the context, not in the loss
            pieces += [(content[cursor:span.start()], True), (span.group(0), False)]
            cursor = span.end()
        pieces.append((content[cursor:] + END, True))
    if add_generation_prompt:
        pieces.append((ASSISTANT, False))
    return [(text, trained) for text, trained in pieces if text]


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as one string (what the Jinja template renders)."""
    return "".join(text for text, _ in _pieces(tokenizer, messages, add_generation_prompt))


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation so far plus the generation prompt <|assistant|>."""
    text = render_text(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_training(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for a conversation ending with an assistant turn; None if longer than max_length.

    labels[i] = input_ids[i] on trained tokens and -100 elsewhere (HF convention: the model shifts)."""
    problem = check_roles(messages)
    if problem is None and messages[-1]["role"] != "assistant":
        problem = "the last turn must be the assistant's"
    if problem:
        raise ValueError(problem)
    pieces = _pieces(tokenizer, messages, add_generation_prompt=False)
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, (_, trained) in zip(encoded, pieces):
        input_ids += ids
        labels += ids if trained else [IGNORE] * len(ids)
        if len(input_ids) > max_length:
            return None
    return input_ids, labels


def render_completion(tokenizer, prompt_text: str, completion: str) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of a rendered prompt followed by a completion as generated.

    completion_mask is 1 on the completion's tokens and 0 on the prompt and on calculator output
    <|result|>...<|/result|> (the tool wrote it, not the policy). The pieces are cut at special tokens, so
    the ids are those of tokenizing the whole text."""
    pieces, cursor = [(prompt_text, 0)], 0
    for span in _RESULT_SPAN.finditer(completion):
        pieces += [(completion[cursor:span.start()], 1), (span.group(0), 0)]
        cursor = span.end()
    pieces.append((completion[cursor:], 1))
    pieces = [(text, trained) for text, trained in pieces if text]
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    ids = [t for piece in encoded for t in piece]
    mask = [trained for piece, (_, trained) in zip(encoded, pieces) for _ in piece]
    return ids, mask
