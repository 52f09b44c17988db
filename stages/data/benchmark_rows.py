"""Benchmark rows in their hub layouts (GSM8K, ARC, HellaSwag, MMLU) as items: the multiple-choice and
generation items the benchmark eval scores (stages/eval/benchmarks.py) and the Q&A task sources reuse
(stages/data/tasks/qa.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


@dataclass
class Choice:
    """One multiple-choice item: `context` continued by each of `choices`; `gold` indexes the right one."""
    context: str
    choices: list[str]
    gold: int


@dataclass
class Problem:
    """One generation item: a question and its reference final answer (a number for GSM8K)."""
    question: str
    answer: str


def gsm8k_item(row: dict) -> Problem:
    answer = extract_gsm8k_answer(row["answer"])
    if answer is None:
        raise ValueError(f"no '#### N' in answer {row['answer'][-40:]!r}")
    return Problem(question=row["question"], answer=answer)


def arc_item(row: dict) -> Choice:
    labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
    return Choice(context=f"Question: {row['question']}\nAnswer:", choices=[" " + t for t in texts],
                  gold=labels.index(str(row["answerKey"])))


def _hellaswag_clean(text: str) -> str:
    text = text.replace(" [title]", ". ").strip()
    text = re.sub(r"\[.*?\]", "", text)  # WikiHow markup such as [header]
    return text.replace("  ", " ")


def hellaswag_item(row: dict) -> Choice:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize() if "ctx_a" in row else row["ctx"]
    context = _hellaswag_clean(f"{row['activity_label']}: {ctx}")
    return Choice(context=context, choices=[" " + _hellaswag_clean(e) for e in row["endings"]],
                  gold=int(row["label"]))


def mmlu_item(row: dict) -> Choice:
    subject = str(row.get("subject", "")).replace("_", " ")
    head = f"The following is a question about {subject}.\n" if subject else ""
    return Choice(context=f"{head}Question: {row['question']}\nAnswer:",
                  choices=[" " + str(c) for c in row["choices"]], gold=int(row["answer"]))


# ------------------------------------------------------------------ GSM8K answers
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _clean_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    if not match:
        return None
    value = match.group(0).replace(",", "").replace("$", "")
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    # 72.0 and 72 are the same answer; keep integers without a decimal point
    return str(number.to_integral_value()) if number == number.to_integral_value() else str(number.normalize())


def extract_gsm8k_answer(text: str) -> str | None:
    """The final numeric answer: after the last '####', else the last 'Answer:' line, else the last number.

    '#### 1,234 apples.' -> '1234'; 'so $5.50 total' -> '5.5'; '72.0' -> '72'.
    """
    if "####" in text:
        return _clean_number(text.rsplit("####", 1)[1])
    answer_lines = re.findall(r"Answer:\s*(.*)", text)
    for line in reversed(answer_lines):
        number = _clean_number(line)
        if number is not None:
            return number
    numbers = _NUMBER.findall(text)
    return _clean_number(numbers[-1]) if numbers else None


# ------------------------------------------------------------------ scoring
