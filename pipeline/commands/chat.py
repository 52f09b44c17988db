"""`lifecycle chat CKPT`: multi-turn terminal chat with a checkpoint, the tools running inside generation
(the calculator always, search when the checkpoint dir holds an index: stages/tools/search.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline.errors import UserError
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.chat import HELP, chat_loop, default_system
from stages.lm.model import load_causal_lm
from stages.tools.search import load_search_index


def add_arguments(p) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--system", default=None, help="system prompt (default: the model's built-in one)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=256)


def main(args) -> int:
    path = args.checkpoint
    if not Path(path).is_dir() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise UserError(f"chat: {path} is not a model dir (expected an HF model dir such as runs/tiny/sft, or a hub id)")
    model, tokenizer = load_causal_lm(path, device="cuda" if torch.cuda.is_available() else "cpu")
    ensure_chat_tokens(tokenizer)
    system = default_system(path) if args.system is None else (args.system or None)
    search = load_search_index(path)
    print(f"chatting with {path} | system: {system or '(none)'} | "
          f"search: {f'{len(search)} passages' if search is not None else '(none)'} | {HELP}", flush=True)

    def read() -> str:
        return input("you> ")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(model, tokenizer, system, read, write, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
              search=search)
    return 0
