"""Built-in conversation tasks with verifiable answers: the embedded SFT data and the RL/eval prompts.

    from stages.data.tasks import FAMILIES, make_tasks, score, is_well_formed
    tasks = make_tasks("arithmetic", n=100, seed=0, split="test")
    tasks[0].prompt_messages()       # [{"role": "user", "content": "What is 347 + 85?"}]
    score(tasks[0], "...\\nAnswer: 432<|end|>")   # 1.0

Every assistant answer puts its working first and ends with the line "Answer: <value>".
These are the `builtin:<family>` task sources; stages draw every source (reasoning-gym, GSM8K/MATH/Q&A/
multiple-choice files and hub sets too) through stages/data/tasks/sources.py (docs/tasks.md).
Splits: a prompt belongs to "test" iff sha256(family, prompt) falls in the bottom 20% (SPLIT_TEST_SHARE),
independent of the seed, so train and test are disjoint for any pair of seeds. make_tasks draws from a
seeded random.Random and keeps the prompts of the requested split: same (family, n, seed, split), same tasks.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from stages.data.special_tokens import (
    ASSISTANT,
    BOS,
    CALL,
    END,
    END_CALL,
    END_RESULT,
    END_SEARCH,
    RESULT,
    SEARCH,
    SYSTEM,
    USER,
)
from stages.data.tasks import arithmetic, calculator, decimals, persona, spelling, verify

FAMILIES: tuple[str, ...] = ("arithmetic", "spelling", "decimal_compare", "calculator", "identity", "unknown")
GENERATORS = {"arithmetic": arithmetic.generate, "spelling": spelling.generate, "decimal_compare": decimals.generate,
              "calculator": calculator.generate, "identity": persona.generate_identity,
              "unknown": persona.generate_unknown}
DEFAULT_SYSTEM = persona.DEFAULT_SYSTEM
SPLIT_TEST_SHARE = 0.2       # share of the prompt space that is held out
SYSTEM_SHARE = 0.1           # non-identity tasks that carry the default system prompt (chat uses one)
ANSWER_PREFIX = "Answer:"


@dataclass
class Task:
    family: str
    messages: list[dict]      # full conversation; the last message is the reference assistant answer
    answer: str               # the verifiable final answer
    meta: dict = field(default_factory=dict)

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the final assistant answer."""
        return self.messages[:-1]


def split_of(family: str, key: str) -> str:
    digest = hashlib.sha256(f"{family}\x00{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < SPLIT_TEST_SHARE else "train"


def _task(family: str, rng: random.Random) -> tuple[str, Task]:
    prompt, reasoning, answer, meta = GENERATORS[family](rng)
    system = meta.pop("system", None)
    key = f"{system or ''}\n{prompt}"
    if system is None and rng.random() < SYSTEM_SHARE:
        system = DEFAULT_SYSTEM
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt},
                 {"role": "assistant", "content": f"{reasoning}\n{ANSWER_PREFIX} {answer}"}]
    return key, Task(family, messages, answer, meta)


def make_tasks(family: str, n: int, seed: int, split: str) -> list[Task]:
    """n tasks of one family from one split, deterministic in (family, n, seed, split).

    The test split avoids repeating a prompt while the family's prompt space allows it."""
    if family not in GENERATORS:
        raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILIES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{seed}:{family}:{split}")
    tasks: list[Task] = []
    seen: set[str] = set()
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        key, task = _task(family, rng)
        if split_of(family, key) != split:
            continue
        if split == "test" and key in seen and attempts < 50 * n + 1000:
            continue
        seen.add(key)
        tasks.append(task)
    return tasks


_SPECIAL = re.compile("|".join(re.escape(t) for t in (END, BOS, "<|pad|>")))


def extract_answer(text: str) -> str | None:
    """The value after the last "Answer:" (up to the end of its line or the end token), or None."""
    idx = text.rfind(ANSWER_PREFIX)
    if idx < 0:
        return None
    value = _SPECIAL.split(text[idx + len(ANSWER_PREFIX):])[0].split("\n")[0].strip()
    return value or None


def _normalise(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip().rstrip(".").strip().lower().replace("\u2019", "'"))


def _as_number(value: str) -> Decimal | None:
    try:
        return Decimal(value.replace(",", ""))
    except (InvalidOperation, ValueError):
        return None


def score(task: Task, completion_text: str) -> float:
    """1.0 if the extracted final answer equals the task's answer (numbers compared by value), else 0.0.

    Tasks of other sources name their verifier in meta["verifier"] (stages/data/tasks/verify.py)."""
    got = extract_answer(completion_text)
    if task.meta.get("verifier"):
        return verify.score(task.meta["verifier"], got, completion_text, task.answer, task.meta)
    if got is None:
        return 0.0
    got, want = _normalise(got), _normalise(task.answer)
    if got == want:
        return 1.0
    a, b = _as_number(got), _as_number(want)
    return 1.0 if a is not None and b is not None and a == b else 0.0


def is_well_formed(completion_text: str) -> bool:
    """The turn ends with <|end|>, its last line is "Answer: <value>", no other turn's header leaks in,
    and tool tags (calculator, search, results) are balanced."""
    text = completion_text.rstrip()
    if not text.endswith(END):
        return False
    body = text[: -len(END)]
    if any(tok in body for tok in (END, BOS, SYSTEM, USER, ASSISTANT)):
        return False
    if any(body.count(open_) != body.count(close) for open_, close in
           ((CALL, END_CALL), (SEARCH, END_SEARCH), (RESULT, END_RESULT))):
        return False
    last = body.rstrip().split("\n")[-1]
    return last.startswith(ANSWER_PREFIX) and bool(last[len(ANSWER_PREFIX):].strip())
