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


def peeks_at_rl(recipe, inputs, ctx):
    """Reads a section its spec does not list: the runner must refuse, so fingerprints cover all reads."""
    return {"eval/value": float(recipe.rl.max_steps)}


def any_stage(recipe, inputs, ctx):
    """Stands in for any real stage kind: records its inputs, so graph tests can run whole chains fast."""
    return _write(ctx, inputs, ctx.stage)


def seeded(recipe, inputs, ctx):
    """A stage whose result depends on the seed (for sweeps): accuracy seed/100; seed 13 crashes."""
    if recipe.seed == 13:
        raise RuntimeError("unlucky seed")
    return _write(ctx, inputs, "seeded") | {"eval/acc/arithmetic": recipe.seed / 100,
                                            "control/eval/acc/arithmetic": 0.5}
