"""`lifecycle tokenize TEXT`: the tokens of a text, as the model sees them."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from pipeline.errors import UserError
from stages.lm.bpe import render_tokens


def add_arguments(p) -> None:
    p.add_argument("text")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: runs/tiny/tokenizer)")


def main(args) -> int:
    path = args.tokenizer or "runs/tiny/tokenizer"
    if not Path(path).is_dir():
        raise UserError(f"--tokenizer {path}: no tokenizer dir there (train one: make tokenizer, or pass --tokenizer DIR)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(args.text, add_special_tokens=False)["input_ids"]
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8'))} bytes")
    print(render_tokens(tokenizer, args.text))
    for i in ids:
        print(f"{i:>7}  {tokenizer.decode([i])!r}")
    return 0
