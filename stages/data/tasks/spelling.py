"""Spelling family: letter counting and word length, done by spelling the word out first.

A BPE model sees "strawberry" as one or two tokens, not ten letters; spelling it out puts each letter
in its own place, with a running count next to the letters that matter:

    Spell it out: s, t, r (1), a, w, b, e, r (2), r (3), y.
    Answer: 3
"""
from __future__ import annotations

import random

WORDS = """strawberry banana apple orange cherry lemon mango grape peach melon
river mountain forest desert island ocean valley meadow garden window
letter number pencil paper basket bottle candle button mirror ladder
hammer needle pillow blanket carpet kettle jacket rocket planet comet
summer winter spring autumn morning evening tonight tomorrow yesterday weekend
happy little bright quiet simple strong gentle silver golden purple
banana mississippi committee balloon coffee cookie bookkeeper address success tennis
elephant giraffe kangaroo penguin dolphin rabbit turtle parrot monkey tiger
teacher doctor farmer driver singer painter baker sailor writer dancer
school market church castle bridge street village harbor station library
bread butter cheese pepper carrot potato tomato onion noodle pizza
yellow green brown black white orange violet scarlet crimson indigo
thunder lightning rainbow blizzard drizzle breeze shadow sunshine moonlight starlight
guitar violin trumpet piano drummer whistle cymbal banjo cello flute
computer keyboard monitor printer program network server cable signal battery
journey captain pirate treasure dragon wizard knight shield sword arrow""".split()
COUNT_TEMPLATES = [
    "How many {l}'s are in the word {w}?",
    "How many times does the letter \"{l}\" appear in \"{w}\"?",
    "Count the letter {l} in {w}.",
    "How many {l}s does {w} have?",
]
LENGTH_TEMPLATES = ["How many letters are in the word {w}?", "How long is the word \"{w}\" in letters?"]


def count_working(word: str, letter: str) -> list[str]:
    parts, count = [], 0
    for ch in word:
        if ch == letter:
            count += 1
            parts.append(f"{ch} ({count})")
        else:
            parts.append(ch)
    lines = [f"Spell it out: {', '.join(parts)}."]
    if count == 0:
        lines.append(f"There is no {letter}.")
    return lines


def generate(rng: random.Random) -> tuple[str, str, str, dict]:
    word = rng.choice(WORDS)
    if rng.random() < 0.25:
        prompt = rng.choice(LENGTH_TEMPLATES).format(w=word)
        parts = [f"{ch} ({i})" for i, ch in enumerate(word, 1)]
        return prompt, f"Spell it out: {', '.join(parts)}.", str(len(word)), {"word": word, "kind": "length"}
    # mostly letters that occur (often repeated ones), sometimes one that does not
    letter = rng.choice(word) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    prompt = rng.choice(COUNT_TEMPLATES).format(l=letter, w=word)
    answer = str(word.count(letter))
    return prompt, "\n".join(count_working(word, letter)), answer, {"word": word, "letter": letter, "kind": "count"}
