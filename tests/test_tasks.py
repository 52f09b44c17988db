"""Built-in task families: deterministic, train/test disjoint, references score 1 and are well formed."""
from __future__ import annotations

import re

import pytest

from stages.data.tasks import FAMILIES, Task, extract_answer, is_well_formed, make_tasks, score, split_of
from stages.data.tasks.arithmetic import add_working, sub_working
from stages.data.tasks.decimals import compare_working


def _key(task: Task) -> str:
    # what the split hashes: the identity family's system prompt plus the question
    system = task.messages[0]["content"] if task.family == "identity" else ""
    return f"{system}\n{task.prompt_messages()[-1]['content']}"


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_seed(family):
    a = make_tasks(family, 40, seed=3, split="train")
    b = make_tasks(family, 40, seed=3, split="train")
    c = make_tasks(family, 40, seed=4, split="train")
    assert [t.messages for t in a] == [t.messages for t in b]
    assert [t.messages for t in a] != [t.messages for t in c]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_test_disjoint_across_seeds(family):
    train = {_key(t) for seed in (0, 1) for t in make_tasks(family, 400, seed=seed, split="train")}
    test = {_key(t) for t in make_tasks(family, 60, seed=2, split="test")}
    assert train and test
    assert not train & test
    assert all(split_of(family, k) == "test" for k in test)


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_answers_score_and_are_well_formed(family):
    for task in make_tasks(family, 50, seed=0, split="test"):
        reference = task.messages[-1]["content"]
        assert task.messages[-1]["role"] == "assistant" and task.prompt_messages()[-1]["role"] == "user"
        assert reference.split("\n")[-1] == f"Answer: {task.answer}"
        assert len(reference.split("\n")) >= 2, "the working comes before the answer"
        assert score(task, reference + "<|end|>") == 1.0
        assert is_well_formed(reference + "<|end|>")
        assert score(task, reference.rsplit("Answer:", 1)[0] + "Answer: 12345678987") == 0.0


def test_test_split_prompts_are_distinct():
    tasks = make_tasks("arithmetic", 100, seed=0, split="test")
    assert len({_key(t) for t in tasks}) == 100


def test_extract_and_score_normalise():
    assert extract_answer("work\nAnswer: 42<|end|>") == "42"
    assert extract_answer("Answer: 1\nmore\nAnswer:  7 \n") == "7"
    assert extract_answer("no answer here") is None
    assert extract_answer("Answer: <|end|>") is None
    task = Task("decimal_compare", [], "9.9")
    assert score(task, "Answer: 9.90") == 1.0 and score(task, "Answer: 9.11") == 0.0
    assert score(Task("unknown", [], "I don't know"), "Answer: i don\u2019t know.") == 1.0


def test_well_formed_rules():
    assert is_well_formed("1 + 1 = 2.\nAnswer: 2<|end|>")
    assert not is_well_formed("1 + 1 = 2.\nAnswer: 2")                  # no end of turn
    assert not is_well_formed("Answer: 2\nand more<|end|>")              # answer not last
    assert not is_well_formed("Answer: 2<|user|>hi<|end|>")              # leaks another turn
    assert not is_well_formed("<|calc|>2*3\nAnswer: 6<|end|>")           # unbalanced tool call
    assert is_well_formed("<|calc|>2*3<|/calc|><|result|>6<|/result|>\nAnswer: 6<|end|>")


def _written_digits(lines):
    return "".join(re.search(r"write (\d)", line).group(1) for line in lines)[::-1]


@pytest.mark.parametrize("a, b", [(347, 85), (999, 999), (10, 10), (505, 96), (100, 1)])
def test_column_working_spells_the_result(a, b):
    for lines, value in ((add_working(a, b), a + b), (sub_working(a, b), a - b)):
        assert int(_written_digits(lines)) == value
        assert int(lines[-1].rsplit(": ", 1)[1]) == value  # the result so far, on the last line


@pytest.mark.parametrize("a, b", [(402, 187), (347, 85), (1000 - 1, 999), (510, 96)])
def test_each_column_line_starts_with_its_inputs_and_its_sum_holds(a, b):
    # "models need tokens to think": a line writes the column's digits and the carry/borrow in first,
    # and decides a borrow ("+10") only after them, so no token has to look three places up at once
    for lines, op in ((add_working(a, b), "+"), (sub_working(a, b), "-")):
        width = max(len(str(a)), len(str(b)))
        carry = 0
        for i, line in enumerate(lines[:width]):
            da, db = (int(str(n).zfill(width)[::-1][i]) for n in (a, b))
            lhs, rhs = line.split(",")[0].split("=")
            assert lhs.startswith(f"{da}{op}{db}{op}{carry}")
            assert eval(lhs) == int(rhs)  # noqa: S307 - our own digits and operators
            carry = 1 if ("carry 1" in line or "borrow 1" in line) else 0


def test_decimal_working():
    lines, answer = compare_working("9.9", "9.11", "bigger")
    assert answer == "9.9" and lines[0] == "Align the digits: 9.90 and 9.11."
    assert compare_working("3.25", "3.205", "smaller")[1] == "3.205"
    assert compare_working("12.1", "3.999", "bigger")[1] == "12.1"


def test_spelling_counts_letters():
    for task in make_tasks("spelling", 100, seed=1, split="train"):
        meta = task.meta
        expected = meta["word"].count(meta["letter"]) if meta["kind"] == "count" else len(meta["word"])
        assert task.answer == str(expected)


def test_calculator_tasks_call_the_tool():
    task = make_tasks("calculator", 1, seed=0, split="train")[0]
    content = task.messages[-1]["content"]
    assert f"<|calc|>{task.meta['expr']}<|/calc|><|result|>{task.answer}<|/result|>" in content


def test_unknown_family_rejects_bad_args():
    with pytest.raises(ValueError, match="unknown task family"):
        make_tasks("poetry", 1, 0, "train")
    with pytest.raises(ValueError, match="split"):
        make_tasks("arithmetic", 1, 0, "dev")
