"""`lifecycle export CKPT --format gguf|hf --out PATH`: one file for llama.cpp, or a clean HF dir.

    lifecycle export runs/tiny/rl --format gguf --out tiny-rl.gguf [--dtype f32|f16|q8_0]
    lifecycle export runs/tiny/rl --format hf --out exports/tiny-rl

gguf: serve/gguf_export.py (llama architecture; tokenizer and chat template in the metadata).
hf: serve/hf_export.py (save_pretrained + tokenizer + a model card with the lineage from the run's manifests).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from transformers.utils import logging as hf_logging

from pipeline.errors import UserError
from serve.engine import model_name
from serve.gguf_export import export_gguf
from serve.hf_export import export_hf
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.model import load_causal_lm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="HF model dir, e.g. runs/tiny/rl")
    p.add_argument("--format", required=True, choices=["gguf", "hf"], help="gguf: one llama.cpp file; hf: a model dir")
    p.add_argument("--out", required=True, help="the .gguf file, or the directory for hf")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "q8_0"], help="gguf tensor type (norms stay f32)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


def main(args) -> int:

    hf_logging.disable_progress_bar()  # one line per event, no loading bars
    src, out = Path(args.checkpoint), Path(args.out)
    if not (src / "config.json").is_file():
        raise UserError(f"export: {src} is not a model dir (expected an HF model dir such as runs/tiny/rl)")
    if out.exists() and not args.force and (out.is_file() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists (pass --force to replace it)")
    if args.format == "gguf" and out.is_dir():
        raise UserError(f"--out {out}: is a directory; gguf writes one file, e.g. --out {out / 'model.gguf'}")
    model, tokenizer = load_causal_lm(src)
    ensure_chat_tokens(tokenizer)
    name = model_name(str(src))
    if args.format == "gguf":
        info = export_gguf(model, tokenizer, out, args.dtype, name=name)
        print(f"export: {out} ({info['bytes'] / 1e6:.1f} MB, {info['tensors']} tensors, {args.dtype}, "
              f"vocab {info['vocab']}); run it: llama-cli -m {out} -cnv")
    else:
        info = export_hf(model, tokenizer, src, out, name)
        print(f"export: {out} ({', '.join(info['files'])}); lineage: {' -> '.join(info['stages']) or 'unknown'}")
    return 0
