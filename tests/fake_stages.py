"""Minimal stage functions for testing the runner's mechanics (ordering, skipping, crashes, launch).

They follow the real stage contract; the real stages are tested in their own files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def _write(ctx, inputs, name):
    upstream = {role: json.loads((Path(p) / "out.json").read_text()) for role, p in inputs.items()}
    payload = {"stage": name, "upstream": upstream}
    (ctx.out_dir / "out.json").write_text(json.dumps(payload))
    ctx.tracker.log({"train/loss": 1.0}, step=1, total=1)
    return {"eval/value": 1.0}


def first(recipe, inputs, ctx):
    return _write(ctx, inputs, "first")


def second(recipe, inputs, ctx):
    (ctx.out_dir / "partial.bin").write_bytes(b"x" * 10)
    if os.environ.get("FAKE_CRASH") == "second":
        raise RuntimeError("boom in the middle of second")
    return _write(ctx, inputs, "second") | {"eval/steps": float(recipe.pretrain.max_steps)}


def third(recipe, inputs, ctx):
    return _write(ctx, inputs, "third")


def allreduce(recipe, inputs, ctx):
    """Under `accelerate launch`: every rank contributes rank+1; rank 0 reports the world's sum."""
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    acc = Accelerator(cpu=not torch.cuda.is_available())
    value = torch.tensor([float(acc.process_index + 1)])
    if dist.is_initialized():
        dist.all_reduce(value)
    ctx.log(f"rank {acc.process_index} of {acc.num_processes}")
    return {"world_size": float(acc.num_processes), "sum": float(value.item())}


def noisy(recipe, inputs, ctx):
    """What real stages do that prints by itself: save and load a transformers model (progress bars),
    tokenize shards (our tqdm bar), and libraries warning."""
    import logging
    import warnings

    from transformers import AutoModelForCausalLM

    from pipeline.schema import Data, Model
    from stages.data.shards import build_shards
    from stages.model import build_model
    from stages.tokenizer import train_bpe
    tokenizer = train_bpe(["a little text to learn merges from, 123"] * 20, vocab_size=300)
    build_model(Model(n_layer=1, n_embd=16, n_head=2, seq_len=16), tokenizer).save_pretrained(ctx.out_dir / "m")
    AutoModelForCausalLM.from_pretrained(ctx.out_dir / "m")
    corpus = ctx.out_dir / "corpus.txt"
    corpus.write_text("Some words to tokenize, and more words.\n" * 200)
    build_shards(Data(source="local", paths=[str(corpus)], num_workers=1), 0, tokenizer, ctx.out_dir / "shards",
                 log=ctx.log, progress_bar=True)
    warnings.warn("a library's deprecation notice", UserWarning)
    logging.getLogger("transformers.modeling_utils").warning("a library's log record")
    ctx.tracker.log({"train/loss": 1.0}, step=1, total=1)
    return {"eval/value": 1.0}
