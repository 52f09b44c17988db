"""`lifecycle chat CKPT [--system "..."]`: multi-turn terminal chat with any HF chat model dir.

    lifecycle chat runs/tiny/sft
    lifecycle chat runs/tiny/rl --system "You are Pip, a small language model made by Acme Labs."

Tokens are printed as they are sampled; calculator calls are shown as [calc 123*456 = 56088] and searches
as [search QUERY -> PASSAGE] (the result is the tool's, inserted by stages/lm/generation.py, not the
model's; the search index is the one saved in the model dir, stages/tools/search.py). The system prompt defaults to
the model dir's system_prompt.txt (written by the SFT stage), else the built-in identity prompt;
--system "" means none. Commands: /reset (forget the conversation), /system TEXT, /exit (or Ctrl-D).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from stages.data.chat import render_prompt
from stages.data.special_tokens import CALL, END, END_CALL, END_RESULT, END_SEARCH, RESULT, SEARCH
from stages.data.tasks import DEFAULT_SYSTEM
from stages.lm.generation import stream
from stages.tools.search import SearchIndex

SHOWN = {CALL: "[calc ", END_CALL: " = ", SEARCH: "[search ", END_SEARCH: " -> ", RESULT: "", END_RESULT: "]"}
HELP = "commands: /reset  /system TEXT  /exit"


def default_system(checkpoint: str) -> str:
    path = Path(checkpoint) / "system_prompt.txt"
    return path.read_text().strip() if path.is_file() else DEFAULT_SYSTEM


def shown_text(text: str) -> str:
    """Completion text as the user sees it: tool tags as [calc EXPR = VALUE] and [search QUERY -> PASSAGE],
    no end token."""
    for tag, shown in SHOWN.items():
        text = text.replace(tag, shown)
    return text.replace(END, "")


def reply(model, tokenizer, messages: list[dict], write: Callable[[str], None], *, temperature: float,
          max_new_tokens: int, search: SearchIndex | None = None) -> str:
    """Stream one assistant turn to `write`; return its text (tool spans kept, no end token)."""
    ids: list[int] = []
    shown = ""
    for token, _ in stream(model, tokenizer, render_prompt(tokenizer, messages), max_new_tokens=max_new_tokens,
                           temperature=temperature, search=search):
        ids.append(token)
        text = shown_text(tokenizer.decode(ids, skip_special_tokens=False))
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            write(text[len(shown):])
            shown = text
    return tokenizer.decode(ids, skip_special_tokens=False).replace(END, "")


def chat_loop(model, tokenizer, system: str | None, read: Callable[[], str], write: Callable[[str], None], *,
              temperature: float = 0.0, max_new_tokens: int = 256, search: SearchIndex | None = None) -> list[dict]:
    """Read user lines until /exit or EOF; returns the conversation."""
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read().strip()
        except EOFError:
            break
        if line in ("/exit", "/quit"):
            break
        if line == "/reset" or line.startswith("/system "):
            system = line[len("/system "):].strip() if line.startswith("/system ") else system
            messages = [{"role": "system", "content": system}] if system else []
            write(f"(new conversation{', system: ' + system if system else ''})\n")
            continue
        if not line or line.startswith("/"):
            write(HELP + "\n")
            continue
        messages.append({"role": "user", "content": line})
        write("assistant> ")
        text = reply(model, tokenizer, messages, write, temperature=temperature, max_new_tokens=max_new_tokens,
                     search=search)
        write("\n")
        messages.append({"role": "assistant", "content": text or " "})
    return messages
