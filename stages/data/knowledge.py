"""SFT conversations about the corpus's facts: answer what the model knows, say "I don't know" for the rest,
and look facts up when the search tool is offered.

    from stages.data.knowledge import knowledge_conversations
    convs = knowledge_conversations(world.questions("train"), labels, cfg.knowledge, index, seed)

`labels` come from probing the model SFT starts from (stages/eval/knowledge.py), as in Llama 3's
factuality recipe: with refusals "probe", a known fact is answered by restating its corpus sentence
(the restatement is the model's working: "Brisa Tolvane lives in" recalls what pretraining stored),
an unknown one gets a refusal naming what the model cannot recall, and an unsure one is left out;
with refusals "none" (the control) every question is answered, whatever the model knows. A
`search_share` of the conversations offer the search tool in the system prompt and show a lookup
first (<|search|>QUERY<|/search|><|result|>PASSAGE<|/result|>, the passage the real index returns,
masked from the loss), then the answer read from it; lookups whose passage lacks the fact are dropped.
"""
from __future__ import annotations

import random

from stages.data.special_tokens import END_RESULT, END_SEARCH, RESULT, SEARCH
from stages.data.tasks import ANSWER_PREFIX
from stages.data.tasks.persona import DEFAULT_SYSTEM, IDK

SEARCH_SYSTEM = f"{DEFAULT_SYSTEM} You can search a library of documents."


def is_refusal(answer: str) -> bool:
    return answer.strip().rstrip(".").lower().replace("\u2019", "'") == IDK.lower()


def answer_text(question) -> str:
    return f"{question.statement}\n{ANSWER_PREFIX} {question.answer}"


def refusal_text(question) -> str:
    return f"{IDK}: I have read too little about {question.name} to recall {question.recall()}.\n{ANSWER_PREFIX} {IDK}"


def lookup_text(question, passage: str) -> str | None:
    """The lookup and the answer read from its passage; None when the passage does not state the fact."""
    if question.statement not in passage:
        return None
    return f"{SEARCH}{question.cloze}{END_SEARCH}{RESULT}{passage}{END_RESULT}\n{answer_text(question)}"


def knowledge_conversations(questions, labels: dict[str, str], cfg, index, seed: int) -> list[tuple[str, list[dict]]]:
    """cfg.questions conversations (where, messages), cycling over `questions` in a seeded order."""
    rng = random.Random(f"{seed}:sft:knowledge")
    memory, lookups = [], []
    for q in questions:
        if cfg.refusals == "none" or labels[q.key] == "known":
            memory.append((q, answer_text(q)))
        elif labels[q.key] == "unknown":
            memory.append((q, refusal_text(q)))
        reply = lookup_text(q, index.tool_result(q.cloze)) if index is not None else None
        if reply is not None:
            lookups.append((q, reply))
    out = []
    for i in range(cfg.questions):
        looks_up = bool(lookups) and (not memory or rng.random() < cfg.search_share)
        pool, system = (lookups, SEARCH_SYSTEM) if looks_up else (memory, None)
        q, reply = pool[rng.randrange(len(pool))]
        messages = [{"role": "system", "content": system}] if system else []
        out.append((f"knowledge:{q.key}:{i}", messages + [{"role": "user", "content": q.text},
                                                         {"role": "assistant", "content": reply}]))
    return out


def replay_examples(world, n: int, tokenizer, seed: int) -> list[tuple[list[int], list[int]]]:
    """n of the world's corpus entries as (input_ids, labels) with the loss on every token, as in pretraining:
    SFT rows that keep reading the facts, so fine-tuning does not erase them (the pretraining mix of
    InstructGPT's PPO-ptx, here in SFT)."""
    docs = world.documents()
    rng = random.Random(f"{seed}:sft:replay")
    picked = [docs[rng.randrange(len(docs))] for _ in range(n)]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(picked, add_special_tokens=False, split_special_tokens=True)["input_ids"] if picked else []
    return [(bos + x, bos + x) for x in ids]
