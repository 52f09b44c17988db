"""Tokenizer stage: train a byte-level BPE (the 256 byte values, then merges) or reuse an existing one.

    lifecycle run recipes/tiny.yaml --stages tokenizer
    lifecycle tokenize "Hello  world 123" --tokenizer runs/tiny/tokenizer

The tokenizer itself (GPT-2's byte-level BPE with individual digits and our chat special tokens) is
built by stages/lm/bpe.py. The result is a transformers tokenizer dir with our chat template
(stages/data/chat_template.jinja); the stage reports compression (bytes per token) on held-out text.
"""
from __future__ import annotations

from typing import Iterator

from transformers import AutoTokenizer

from pipeline.errors import UserError
from stages.data.sources import iter_split
from stages.lm.bpe import bytes_per_token, ensure_chat_tokens, render_tokens, train_bpe


def _limited(texts: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        total += len(text)
        yield text


def collect_texts(data_cfg, seed: int, train_chars: int, val_chars: int) -> tuple[list[str], list[str]]:
    """Train documents up to train_chars and held-out ones up to val_chars, reading no further than needed
    (a streamed FineWeb is not read to the end)."""
    train, val, n_train, n_val = [], [], 0, 0
    for held_out, doc in iter_split(data_cfg, seed):
        if held_out and n_val < val_chars:
            val.append(doc)
            n_val += len(doc)
        elif not held_out and n_train < train_chars:
            train.append(doc)
            n_train += len(doc)
        if n_train >= train_chars and n_val >= val_chars:
            break
    return train, val


def run(recipe, inputs, ctx) -> dict[str, float]:
    """Train (or reuse) the tokenizer; report compression on held-out text."""
    cfg = recipe.tokenizer
    train_docs, val_docs = collect_texts(recipe.data, recipe.seed, 0 if cfg.from_ else cfg.max_train_chars,
                                         cfg.eval_chars)
    if not val_docs:
        raise UserError(f"data.val_fraction: no held-out documents for the compression report; add documents "
                        f"or raise data.val_fraction (now {recipe.data.val_fraction})")
    if cfg.from_:
        ctx.log(f"reusing tokenizer {cfg.from_}")
        tokenizer = AutoTokenizer.from_pretrained(cfg.from_)
        ensure_chat_tokens(tokenizer)
    else:
        n_chars = sum(len(d) for d in train_docs)
        ctx.log(f"training byte-level BPE to vocab {cfg.vocab_size} on {n_chars:,} chars ({len(train_docs)} documents)")
        tokenizer = train_bpe(train_docs, cfg.vocab_size, cfg.individual_digits)
    tokenizer.save_pretrained(ctx.out_dir)
    held_out = list(_limited(iter(val_docs), cfg.eval_chars))
    bpt = bytes_per_token(tokenizer, held_out)
    metrics = {"eval/bytes_per_token": bpt, "vocab_size": float(len(tokenizer))}
    ctx.tracker.log(metrics)
    ctx.log(f"held-out compression {bpt:.2f} bytes/token; e.g. {render_tokens(tokenizer, held_out[0][:80])}")
    return metrics
