"""Calculator family: arithmetic too big to do in the head (4-5 digit products, sums, differences) is
handed to the calculator tool. The model writes the call; at inference stages/generation.py runs
stages/tools.py and inserts the result, which the model then copies into its answer:

    That is a big calculation, so I will use the calculator.
    <|calc|>48213 * 739<|/calc|><|result|>35629407<|/result|>
    Answer: 35629407

In training the <|result|>...<|/result|> span is context, not target (stages/data/chat.py masks it).
"""
from __future__ import annotations

import random

from stages.tokenizer import CALL, END_CALL, END_RESULT, RESULT

TEMPLATES = ["What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "Please compute {a} {op} {b}.",
             "I need the exact value of {a} {op} {b}."]


def generate(rng: random.Random) -> tuple[str, str, str, dict]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(1000, 99999), rng.randint(100, 9999)
    else:
        a, b = rng.randint(100000, 9999999), rng.randint(10000, 999999)
    expr = f"{a} {op} {b}"
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    reasoning = (f"That is a big calculation, so I will use the calculator.\n"
                 f"{CALL}{expr}{END_CALL}{RESULT}{value}{END_RESULT}")
    return rng.choice(TEMPLATES).format(a=a, b=b, op=op), reasoning, str(value), {"expr": expr}
