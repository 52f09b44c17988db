"""Arithmetic family: 2-3 digit addition and subtraction, bare or as a word problem, solved column by
column from the ones digit before the final answer ("models need tokens to think": each line does one
digit's worth of work, so a small model never has to produce a multi-digit sum in one token).

    347+85:
    7+5+0=12, write 2 carry 1: 2
    4+8+1=13, write 3 carry 1: 32
    3+0+1=4, write 4: 432
    Answer: 432

Each column line is "top digit + bottom digit + carry in", the digit written, and after the colon the
result so far (the new digit in front of the previous line's): reading the written digits back in
reverse order is what small models got wrong, copying the line above is easy. Subtraction keeps the
result non-negative; a column that needs a borrow says so after its digits ("4-8-0+10=6, write 6
borrow 1"), and leading zeros of the result so far are dropped in the answer. The borrow decision
comes after the digits it depends on, so the model never has to decide it before both digits are on
the page (docs/log.md, 2026-11-29, has the measurement).
The working is terse on purpose: every token costs SFT and RL time on a CPU, and operators without
spaces are single tokens. Our own generator rather than reasoning-gym's gsm_symbolic: its multi-step
problems with large numbers are far beyond a ~1M-parameter model, and RL needs this family learnable
but not solved after SFT.
"""
from __future__ import annotations

import random

WORD_ADD = [
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "A box holds {a} {things}. Someone puts in {b} more. How many {things} are in the box?",
    "{name} counted {a} {things} in the morning and {b} in the afternoon. How many in total?",
    "There are {a} {things} on one shelf and {b} on another. How many {things} are there altogether?",
]
WORD_SUB = [
    "{name} has {a} {things} and gives away {b}. How many {things} are left?",
    "A box holds {a} {things}. {b} are taken out. How many {things} remain in the box?",
    "{name} needs {a} {things} and already has {b}. How many more does {name} need?",
    "There were {a} {things} in a shop. {b} were sold. How many {things} are left?",
]
BARE = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?", "Calculate {a} {op} {b}."]
NAMES = ["Sam", "Ana", "Leo", "Mia", "Tom", "Zoe", "Raj", "Eve", "Ben", "Ivy", "Kai", "Lin"]
THINGS = ["apples", "marbles", "books", "coins", "stamps", "shells", "pens", "cards", "eggs", "beads"]


def _digits(n: int, width: int) -> list[int]:
    """Digits from the ones place up, zero-padded to width."""
    return [int(c) for c in str(n).zfill(width)[::-1]]


def _with_result_so_far(lines: list[str], written: list[int]) -> list[str]:
    so_far = ""
    for i, digit in enumerate(written):
        so_far = f"{digit}{so_far}"
        lines[i] += f": {so_far}"
    return lines


def add_working(a: int, b: int) -> list[str]:
    width = max(len(str(a)), len(str(b)))
    lines, written, carry = [], [], 0
    for da, db in zip(_digits(a, width), _digits(b, width)):
        total = da + db + carry
        carry = total // 10
        lines.append(f"{da}+{db}+{total - da - db}={total}, write {total % 10}" + (" carry 1" if carry else ""))
        written.append(total % 10)
    if carry:
        lines.append("carry 1, write 1")
        written.append(1)
    return _with_result_so_far(lines, written)


def sub_working(a: int, b: int) -> list[str]:
    width = len(str(a))
    lines, written, borrow = [], [], 0
    for da, db in zip(_digits(a, width), _digits(b, width)):
        borrow_in = borrow
        borrow = 1 if da - borrow_in < db else 0
        result = da + 10 * borrow - db - borrow_in
        lines.append(f"{da}-{db}-{borrow_in}" + ("+10" if borrow else "") + f"={result}, write {result}"
                     + (" borrow 1" if borrow else ""))
        written.append(result)
    return _with_result_so_far(lines, written)


def generate(rng: random.Random) -> tuple[str, str, str, dict]:
    """(prompt, reasoning, answer, meta) for one problem."""
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    if rng.random() < 0.3:
        template = rng.choice(WORD_ADD if op == "+" else WORD_SUB)
        prompt = template.format(name=rng.choice(NAMES), things=rng.choice(THINGS), a=a, b=b)
    else:
        prompt = rng.choice(BARE).format(a=a, b=b, op=op)
    value = a + b if op == "+" else a - b
    lines = add_working(a, b) if op == "+" else sub_working(a, b)
    reasoning = "\n".join([f"{a}{op}{b}:"] + lines)
    return prompt, reasoning, str(value), {"a": a, "b": b, "op": op}
