"""Decimal comparison family (9.9 vs 9.11): pad both numbers to the same number of decimals, then
compare the whole parts and the decimal places one at a time, left to right:

    Align the digits: 9.90 and 9.11.
    Whole part: 9 = 9.
    Tenths: 9 > 1, so 9.9 is bigger.
    Answer: 9.9
"""
from __future__ import annotations

import random

PLACES = ["Tenths", "Hundredths", "Thousandths"]
TEMPLATES = {
    "bigger": ["Which is bigger, {x} or {y}?", "Which number is larger: {x} or {y}?", "Is {x} or {y} greater?"],
    "smaller": ["Which is smaller, {x} or {y}?", "Which number is less: {x} or {y}?"],
}


def _number(rng: random.Random, whole: int) -> str:
    decimals = rng.randint(1, 3)
    return f"{whole}.{rng.randint(0, 10 ** decimals - 1):0{decimals}d}"


def compare_working(x: str, y: str, want: str) -> tuple[list[str], str]:
    """Working lines and the answer (the original spelling of the bigger/smaller number)."""
    width = max(len(x.split(".")[1]), len(y.split(".")[1]))
    (xw, xf), (yw, yf) = x.split("."), y.split(".")
    xf, yf = xf.ljust(width, "0"), yf.ljust(width, "0")
    lines = [f"Align the digits: {xw}.{xf} and {yw}.{yf}."]
    if int(xw) != int(yw):
        sign = ">" if int(xw) > int(yw) else "<"
        lines.append(f"Whole part: {xw} {sign} {yw}.")
        x_bigger = int(xw) > int(yw)
    else:
        lines.append(f"Whole part: {xw} = {yw}.")
        x_bigger = None
        for place, dx, dy in zip(PLACES, xf, yf):
            if dx == dy:
                lines.append(f"{place}: {dx} = {dy}.")
                continue
            lines.append(f"{place}: {dx} {'>' if dx > dy else '<'} {dy}.")
            x_bigger = dx > dy
            break
    bigger, smaller = (x, y) if x_bigger else (y, x)
    answer = bigger if want == "bigger" else smaller
    lines[-1] = lines[-1][:-1] + f", so {answer} is {want}."
    return lines, answer


def generate(rng: random.Random) -> tuple[str, str, str, dict]:
    while True:
        whole = rng.randint(0, 20)
        x = _number(rng, whole)
        y = _number(rng, whole if rng.random() < 0.75 else rng.randint(0, 20))
        if float(x) != float(y):
            break
    want = rng.choice(["bigger", "smaller"])
    prompt = rng.choice(TEMPLATES[want]).format(x=x, y=y)
    lines, answer = compare_working(x, y, want)
    return prompt, "\n".join(lines), answer, {"x": x, "y": y, "want": want}
