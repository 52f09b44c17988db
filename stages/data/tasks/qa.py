"""Question-answer rows -> Tasks: GSM8K, MATH, plain Q&A and multiple choice (ARC, MMLU, HellaSwag layouts).

    from stages.data.tasks.qa import CONVERTERS
    task = CONVERTERS["gsm8k"]({"question": "...", "answer": "48/2 = <<48/2=24>>24\\n#### 24"}, label="gsm8k")
    task.messages[-1]["content"]   # "48/2 = <|calc|>48/2<|/calc|><|result|>24<|/result|>\\nAnswer: 24"

Each converter takes one row (a dict with the hub dataset's columns) and returns a Task whose last message is
the worked solution ending "Answer: <reference>", and whose meta names the verifier (verify.py). A row that
does not fit raises RowError saying what was expected; the caller adds the row's file:line.
- gsm8k (`question`, `answer`): the rationale is the working; each calculator annotation `<<48/2=24>>` becomes
  a calculator call where it stood, `<|calc|>48/2<|/calc|><|result|>24<|/result|>` (the result written by our
  calculator, stages/tools.py, as at inference; the copy of the result that follows an annotation in the text
  is dropped). An annotation our calculator refuses is removed and its text kept. `#### N` is the reference
  (commas dropped); verifier `number`.
- math (`problem`, `solution`, optional `answer`): the reference is `answer`, else the last `\\boxed{}` of the
  solution; the solution is the working; verifier `math`.
- qa (`question`, `answer`, optional `solution`): verifier `number` when the answer is a number, else `text`.
- arc / mmlu / hellaswag: the benchmark loaders' items (stages/benchmarks.py) with the choices listed as
  A, B, C, ...; the reference is the letter; verifier `choice` (the letter or the choice's text).
"""
from __future__ import annotations

import re

from stages.data.benchmark_rows import arc_item, hellaswag_item, mmlu_item
from stages.data.special_tokens import CALL, END_CALL, END_RESULT, RESULT, SPECIAL_TOKENS
from stages.data.tasks import ANSWER_PREFIX, Task
from stages.data.tasks.verify import boxed, number
from stages.tools.calculator import CalculatorError, calculate

_ANNOTATION = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class RowError(ValueError):
    """A row that does not have the layout its source names; the message says what was expected."""


def _columns(row, names: tuple[str, ...], layout: str) -> list:
    if not isinstance(row, dict):
        raise RowError(f"expected an object with {', '.join(map(repr, names))} ({layout} layout), "
                       f"got a {type(row).__name__}")
    missing = [n for n in names if not isinstance(row.get(n), str) or not row[n].strip()]
    if missing:
        raise RowError(f"expected a non-empty text column {missing[0]!r} ({layout} layout: "
                       f"{', '.join(names)}); the row has {', '.join(sorted(map(str, row))) or 'no columns'}")
    return [row[n] for n in names]


def _task(label: str, question: str, working: str, answer: str, meta: dict) -> Task:
    leaked = sorted(t for t in SPECIAL_TOKENS if t in question or t in answer)
    if leaked:
        raise RowError(f"special tokens in text: {', '.join(leaked)}")
    answer = answer.strip()
    if not answer or "\n" in answer:
        raise RowError(f"expected a one-line reference answer, got {answer!r}")
    content = f"{working.strip()}\n{ANSWER_PREFIX} {answer}" if working.strip() else f"{ANSWER_PREFIX} {answer}"
    return Task(label, [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": content}],
                answer, meta)


def calculator_calls(rationale: str) -> str:
    """GSM8K calculator annotations -> our tool calls (see the module doc)."""
    out, cursor = [], 0
    for match in _ANNOTATION.finditer(rationale):
        expr, shown = match.group(1).strip(), match.group(2).strip()
        out.append(rationale[cursor:match.start()])
        cursor = match.end()
        try:
            result = calculate(expr)
        except CalculatorError:
            continue  # not arithmetic our tool can run: keep the prose, drop the annotation
        out.append(f"{CALL}{expr}{END_CALL}{RESULT}{result}{END_RESULT}")
        if shown and rationale.startswith(shown, cursor):
            cursor += len(shown)
    out.append(rationale[cursor:])
    return "".join(out)


def split_rationale(text: str) -> tuple[str, str]:
    """GSM8K's answer column -> (working with tool calls, reference number without commas)."""
    body, sep, final = text.rpartition("####")
    value = number(final) if sep else None
    if value is None:
        raise RowError(f"expected the 'answer' to end with '#### <number>', got ...{text[-40:]!r}")
    return calculator_calls(body).strip(), final.strip().replace(",", "").replace("$", "")


def gsm8k_task(row, label: str) -> Task:
    question, rationale = _columns(row, ("question", "answer"), "GSM8K")
    working, answer = split_rationale(rationale)
    return _task(label, question, working, answer, {"verifier": "number"})


def math_task(row, label: str) -> Task:
    problem, solution = _columns(row, ("problem", "solution"), "MATH")
    answer = row.get("answer") if isinstance(row.get("answer"), str) and row["answer"].strip() else boxed(solution)
    if not answer:
        raise RowError("expected an 'answer' column or a \\boxed{...} answer in the 'solution'")
    return _task(label, problem, solution, answer, {"verifier": "math"})


def qa_task(row, label: str) -> Task:
    question, answer = _columns(row, ("question", "answer"), "Q&A")
    solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
    kind = "number" if re.fullmatch(r"-?\$?[\d,]*\.?\d+%?", answer.strip()) else "text"
    return _task(label, question, solution, answer, {"verifier": kind})


def _choice_task(item, label: str) -> Task:
    if not 2 <= len(item.choices) <= len(LETTERS) or not 0 <= item.gold < len(item.choices):
        raise RowError(f"expected 2-26 choices and a gold index among them, got {len(item.choices)} and {item.gold}")
    context = item.context.strip()
    head = context[:-len("Answer:")].strip() if context.endswith("Answer:") else f"Which ending fits best?\n{context}"
    choices = [c.strip() for c in item.choices]
    listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    letter = LETTERS[item.gold]
    question = f"{head}\n{listed}\nReply with the letter of the right choice."
    stop = "" if choices[item.gold].endswith((".", "!", "?")) else "."
    return _task(label, question, f"The right choice is {letter}: {choices[item.gold]}{stop}", letter,
                 {"verifier": "choice", "choices": choices})


def _from_benchmark(convert, layout: str, columns: str):
    def make(row, label: str) -> Task:
        try:
            item = convert(row)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise RowError(f"expected the {layout} layout ({columns}); {type(exc).__name__}: {exc}") from None
        return _choice_task(item, label)
    return make


CONVERTERS = {
    "gsm8k": gsm8k_task, "math": math_task, "qa": qa_task,
    "arc": _from_benchmark(arc_item, "ARC", "question, choices {text, label}, answerKey"),
    "mmlu": _from_benchmark(mmlu_item, "MMLU", "question, choices, answer index, optional subject"),
    "hellaswag": _from_benchmark(hellaswag_item, "HellaSwag", "activity_label, ctx or ctx_a/ctx_b, endings, label"),
}
