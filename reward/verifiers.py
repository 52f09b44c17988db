"""Verifiable rewards: is the final answer right (per task family), is the answer well formed.

    from reward.verifiers import verifier_reward, format_reward
    verifier_reward(prompts, completions, tasks=tasks)   # -> [1.0, 0.0, ...]

Every built-in task family (stages/data/tasks) owns its checker; `stages.data.tasks.score` extracts
the value after the last "Answer:" line and compares it the family's way (numbers numerically,
words case-insensitively, ...). These functions give them the reward signature every reward part
shares (reward/combine.py): fn(prompts, completions, **fields) -> list[float].
"""
from __future__ import annotations

from pipeline.errors import UserError
from stages.data import tasks


def _tasks_module():
    return tasks


def verifier_reward(prompts: list[str], completions: list[str], tasks=None, answers=None, **_) -> list[float]:
    """1.0 where the completion's final answer is right, else 0.0.

    `tasks` (stages.data.tasks.Task, one per completion) are scored by their family's checker;
    without them `answers` (strings, e.g. a dataset's answer column) are compared to the extracted
    answer after stripping whitespace.
    """
    t = _tasks_module()
    if tasks is not None:
        return [float(t.score(task, text)) for task, text in zip(tasks, completions, strict=True)]
    if answers is not None:
        return [float(_same(t.extract_answer(text), answer)) for text, answer in zip(completions, answers, strict=True)]
    raise UserError("rl.rewards: 'verifier' needs tasks with answers (built-in families or a dataset answer column)")


def _same(extracted: str | None, answer) -> bool:
    if extracted is None:
        return False
    a, b = extracted.strip(), str(answer).strip()
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return a.lower() == b.lower()


def format_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1.0 where the completion ends its turn with a final "Answer: ..." line, else 0.0."""
    t = _tasks_module()
    return [float(t.is_well_formed(text)) for text in completions]


def extract_answers(completions: list[str]) -> list[str | None]:
    """The value after the last "Answer:" line of each completion (None when there is none)."""
    t = _tasks_module()
    return [t.extract_answer(text) for text in completions]
