"""Calculator family: arithmetic too big to do in the head (up to 4 x 3 digit products, 4-6 digit sums
and differences) is handed to the calculator tool. Big for a small model's head, small enough that it
learns to copy the operands into the call and the result out. The model writes the call; at inference
stages/lm/generation.py runs stages/tools/calculator.py and inserts the result, which the model copies into its answer:

    I will use the calculator.
    <|calc|>4821 * 739<|/calc|><|result|>3562719<|/result|>
    Answer: 3562719

In training the <|result|>...<|/result|> span is context, not target (stages/data/chat.py masks it).
"""
from __future__ import annotations

import random

from stages.data.special_tokens import CALL, END_CALL, END_RESULT, RESULT

TEMPLATES = ["What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "Please compute {a} {op} {b}.",
             "I need the exact value of {a} {op} {b}."]


def generate(rng: random.Random) -> tuple[str, str, str, dict]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(100, 9999), rng.randint(10, 999)
    else:
        a, b = rng.randint(1000, 999999), rng.randint(100, 99999)
    expr = f"{a} {op} {b}"
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    reasoning = (f"I will use the calculator.\n"
                 f"{CALL}{expr}{END_CALL}{RESULT}{value}{END_RESULT}")
    return rng.choice(TEMPLATES).format(a=a, b=b, op=op), reasoning, str(value), {"expr": expr}
