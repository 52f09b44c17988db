"""The equal-compute control for RL: the SFT checkpoint trained further with SFT for RL's wall time.

    from stages.policy_gradient.control import continue_sft
    model, tokenizer, info = continue_sft("runs/tiny/sft", recipe, wall_s=150.0, ctx=ctx)

RL's gain means little without it: RL spends compute, and more SFT with the same compute may buy as
much. The control reuses the SFT stage's own pieces (stages/data/sft_examples.py, stages/lm/finetune.py)
with the recipe's `sft` section, on fresh built-in conversations (seed + 1, same families and train
split, packed when the SFT recipe packs), one process. Schedule: the SFT peak lr, cosine-decayed
over the wall-time budget (not over a step count, which is unknown in advance) to lr * min_lr_ratio,
i.e. one more SFT cycle.
"""
from __future__ import annotations

import math
import time

import torch
from accelerate import Accelerator

from stages.data.conversations import SkipReport
from stages.data.sft_examples import build_examples, pack, train_families
from stages.lm.finetune import StepSchedule, load_start_model, train_step
from stages.lm.optim import make_optimizer


def time_cosine(elapsed: float, budget: float, min_ratio: float) -> float:
    """lr multiplier: 1 at the start, min_ratio once `budget` seconds have passed, cosine between."""
    frac = min(max(elapsed / budget, 0.0), 1.0) if budget > 0 else 1.0
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


def continue_sft(policy_path: str, recipe, wall_s: float, ctx):
    """SFT from `policy_path` until `wall_s` seconds of training have passed; (model, tokenizer, info)."""
    cfg = recipe.sft
    accelerator = Accelerator()
    model, tokenizer = load_start_model(policy_path)
    families = train_families(cfg)
    examples = build_examples(cfg, tokenizer, recipe.seed + 1, families, SkipReport())
    pad_id = tokenizer.pad_token_id
    rows = pack(examples, cfg.max_length, pad_id) if cfg.packing else [(i, lab, None) for i, lab in examples]
    per_step = cfg.micro_batch_size * cfg.grad_accum
    schedule = StepSchedule(len(rows), per_step, recipe.seed + 1)
    model.to(accelerator.device).train()
    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # lr set by hand below
    model, optimizer = accelerator.prepare(model, optimizer)
    start, step, loss = time.time(), 0, float("nan")
    while time.time() - start < wall_s:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * time_cosine(time.time() - start, wall_s, cfg.optim.min_lr_ratio)
        loss, _ = train_step(model, optimizer, scheduler, accelerator, [rows[i] for i in schedule.rows(step)],
                                 cfg, pad_id)
        step += 1
        if step % 20 == 0:
            ctx.log(f"control | step {step} | loss {loss:.4f} | {time.time() - start:.0f}/{wall_s:.0f}s")
    model = accelerator.unwrap_model(model).eval()
    return model, tokenizer, {"steps": step, "wall_s": time.time() - start, "train/loss": loss}
