"""What a model knows about its corpus's facts, and what it says about the rest.

    from stages.eval.knowledge import probe, evaluate_knowledge
    shares = probe(model, tok, questions, samples=5, seed=0)       # {question key: share of samples right}
    labels = {k: label(s, known_at=0.8, unknown_at=0.0) for k, s in shares.items()}
    metrics, rows = evaluate_knowledge(model, tok, test_questions, labels, prefix="eval/knowledge", seed=0)

The probe follows Llama 3's factuality loop (Dubey et al. 2024, §4.3.6) on a corpus whose facts we
generated: for every question it samples `samples` completions (T=1) of the fact's own corpus phrasing
("Brisa Tolvane lives in") and checks them against the source sentence. Consistently right
(share >= known_at) is "known", consistently wrong (share <= unknown_at) "unknown", else "unsure".
A cloze needs no chat format, so the same probe reads a base model and a chat model.

The eval asks the held-out questions in chat, greedily, twice: from memory (no tool offered) and with
the search tool offered in the system prompt, and sorts each answer into right, "I don't know"
(a refusal), wrong (a hallucination: a confident answer that is not the fact) or no answer at all.
"""
from __future__ import annotations

import re

import torch

from stages.data.chat import render_prompt
from stages.data.knowledge import SEARCH_SYSTEM, is_refusal
from stages.data.tasks import extract_answer
from stages.lm.bpe import encode_plain
from stages.lm.generation import generate

LABELS = ("known", "unknown", "unsure")


def label(share: float, known_at: float, unknown_at: float) -> str:
    return "known" if share >= known_at else "unknown" if share <= unknown_at else "unsure"


def _starts_with(text: str, answer: str) -> bool:
    """The continuation begins with the answer as a whole word ("Karnholt." yes, "Karnholtby" no)."""
    return re.match(re.escape(answer.lower()) + r"(?![a-z0-9])", text.strip().lower()) is not None


@torch.no_grad()
def probe(model, tokenizer, questions, samples: int, seed: int, max_new_tokens: int = 8) -> dict[str, float]:
    """{question key: share of `samples` T=1 cloze completions that state the fact}."""
    bos = tokenizer.bos_token_id
    prompts = [([bos] if bos is not None else []) + ids for ids in encode_plain(tokenizer, [q.cloze for q in questions])]
    outs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0, num_samples=samples,
                    use_tools=False, seed=seed)
    return {q.key: sum(_starts_with(tokenizer.decode(c.completion_ids, skip_special_tokens=True), q.answer)
                       for c in cs) / samples for q, cs in zip(questions, outs)}


def outcome(question, completion_text: str) -> str:
    got = extract_answer(completion_text)
    if got is None:
        return "no_answer"
    if is_refusal(got):
        return "refused"
    return "right" if got.strip().rstrip(".").lower() == question.answer.lower() else "wrong"


def _rates(rows: list[dict], mode: str) -> dict[str, float]:
    """Shares for one mode (memory | search): accuracy overall and on known questions; refusals and
    hallucinations on unknown ones; false refusals on known ones."""
    out: dict[str, float] = {}
    mine = [r for r in rows if r["mode"] == mode]
    tail = "" if mode == "memory" else "_search"
    by = {lab: [r["outcome"] for r in mine if r["label"] == lab] for lab in LABELS}

    def share(items, what):
        return sum(o == what for o in items) / len(items) if items else float("nan")
    out[f"acc{tail}"] = share([r["outcome"] for r in mine], "right")
    out[f"acc_known{tail}"] = share(by["known"], "right")
    out[f"false_refusal_known{tail}"] = share(by["known"], "refused")
    out[f"refusal_unknown{tail}"] = share(by["unknown"], "refused")
    out[f"hallucination_unknown{tail}"] = share(by["unknown"], "wrong")
    out[f"acc_unknown{tail}"] = share(by["unknown"], "right")
    return out


def evaluate_knowledge(model, tokenizer, questions, labels: dict[str, str], *, prefix: str, seed: int,
                       search=None, max_new_tokens: int = 96) -> tuple[dict[str, float], list[dict]]:
    """Metrics `<prefix>/<rate>` (module doc) and one row per (question, mode)."""
    rows: list[dict] = []
    modes = [("memory", None)] + ([("search", SEARCH_SYSTEM)] if search is not None else [])
    for mode, system in modes:
        messages = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q.text}]
                    for q in questions]
        outs = generate(model, tokenizer, [render_prompt(tokenizer, m) for m in messages],
                        max_new_tokens=max_new_tokens, temperature=0.0, seed=seed, search=search)
        for q, (c,) in zip(questions, outs):
            rows.append({"key": q.key, "question": q.text, "answer": q.answer, "repeats": q.repeats,
                         "label": labels[q.key], "mode": mode, "completion": c.text, "outcome": outcome(q, c.text)})
    metrics = {f"{prefix}/{k}": v for mode, _ in modes for k, v in _rates(rows, mode).items()}
    for lab in LABELS:
        metrics[f"{prefix}/n_{lab}"] = float(sum(labels[q.key] == lab for q in questions))
    return metrics, rows
