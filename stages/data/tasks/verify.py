"""Verifiers of the task sources other than the built-in families, chosen by `task.meta["verifier"]`.

    from stages.data.tasks import score          # dispatches here when the task names a verifier
    score(task, "...\\nAnswer: 1,234<|end|>")     # 1.0 for a GSM8K task whose reference is "#### 1234"

Every verifier gets the value after the completion's last "Answer:" line (None when there is none) and
returns 1.0 or 0.0; a rollout record keeps the task's meta, so the same verdict is reached when the reward
model's rankings are built from a rollouts file.
- number: the first number on the answer line (`1,234`, `$5.50`, `-5`, `3.5%` -> 1234, 5.50, -5, 3.5)
  equals the reference by value (`3.50` == `3.5`); without an "Answer:" line, the number after a last
  `####` (GSM8K's own format) counts.
- math: the answer line, its `\\boxed{...}` or `$...$` unwrapped, equals the reference after LaTeX spacing
  and `\\left`/`\\right`/`\\dfrac` normalisation, or both are numbers of equal value.
- choice: the answer is the right choice's letter ("B", "B.", "(b)") or its text.
- text: equal after whitespace, case and trailing-period normalisation.
- gym: reasoning-gym's own `score_answer(answer, entry)` for the task's dataset gives full credit (1.0);
  its partial credit (e.g. 0.01 for any number) would otherwise count as right.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
_LETTER = re.compile(r"^\(?([A-Za-z])[.):]?$")


def number(text: str | None) -> Decimal | None:
    """The first number in text, commas and $ dropped, as a Decimal (None when there is none)."""
    match = _NUMBER.search(text or "")
    if not match:
        return None
    try:
        return Decimal(match.group(0).replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None


def text_norm(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip().rstrip(".").strip().lower().replace("\u2019", "'"))


def boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def math_norm(value: str) -> str:
    inner = boxed(value)
    value = inner if inner is not None else value
    value = value.strip().strip("$").strip().rstrip(".")
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""),
                     ("\\,", ""), ("\\ ", ""), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", "")):
        value = value.replace(old, new)
    value = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", value)
    return re.sub(r"\s+", "", value)


def _number_score(got: str | None, text: str, answer: str) -> float:
    if got is None and "####" in text:
        got = text.rsplit("####", 1)[1].split("\n")[0]
    a, b = number(got), number(answer)
    return float(a is not None and b is not None and a == b)


def _math_score(got: str | None, answer: str) -> float:
    if got is None:
        return 0.0
    x, y = math_norm(got), math_norm(answer)
    if x == y:
        return 1.0
    try:
        return float(Decimal(x.replace(",", "")) == Decimal(y.replace(",", "")))
    except InvalidOperation:
        return 0.0


def _choice_score(got: str | None, answer: str, meta: dict) -> float:
    if got is None:
        return 0.0
    letter = _LETTER.match(got.strip())
    if letter:
        return float(letter.group(1).upper() == answer.upper())
    gold = meta.get("choices", [])[ord(answer.upper()) - ord("A")] if meta.get("choices") else None
    return float(gold is not None and text_norm(got) == text_norm(gold))


@lru_cache(maxsize=64)
def _gym_dataset(name: str, params_json: str):
    import reasoning_gym
    return reasoning_gym.create_dataset(name, seed=0, size=1, **json.loads(params_json))


def _gym_score(got: str | None, meta: dict) -> float:
    if got is None:
        return 0.0
    dataset = _gym_dataset(meta["gym"], json.dumps(meta.get("gym_params") or {}, sort_keys=True))
    try:
        credit = dataset.score_answer(got, entry=meta["entry"])
    except Exception:  # a scorer that chokes on a malformed answer has not seen a right one
        return 0.0
    return float(credit is not None and credit >= 1.0 - 1e-9)


def score(kind: str, got: str | None, text: str, answer: str, meta: dict) -> float:
    """1.0 if the extracted answer `got` (or the completion `text`) is right under verifier `kind`, else 0.0."""
    if kind == "number":
        return _number_score(got, text, answer)
    if kind == "math":
        return _math_score(got, answer)
    if kind == "choice":
        return _choice_score(got, answer, meta)
    if kind == "gym":
        return _gym_score(got, meta)
    if kind == "text":
        return float(got is not None and text_norm(got) == text_norm(answer))
    raise ValueError(f"unknown verifier {kind!r}; expected number, math, choice, gym or text")
