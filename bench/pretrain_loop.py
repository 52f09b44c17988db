"""Pretraining throughput: our loop (stages/pretrain.py) vs a minimal plain-PyTorch loop, same model, data
and batch, measured in one run; prints tokens/s of each and the ratio (target: ours >= 0.9x).

    OMP_NUM_THREADS=1 .venv/bin/python bench/pretrain_loop.py                 # the tiny recipe's model, CPU
    OMP_NUM_THREADS=2 .venv/bin/python bench/pretrain_loop.py --steps 10 --rounds 5

"Ours" is the stage's step exactly as run() calls it: `_train_step` (accelerate, micro-batches from the
memmap shards, clipping, AdamW with decay groups, LambdaLR) plus the per-step metrics line written by
the Tracker (metrics.jsonl, console off). Periodic evals, samples and checkpoints are not included
(their frequency is a recipe choice). "Minimal" is the nanoGPT-style floor: batches from one in-memory
tensor, forward, cross-entropy, backward, clip, AdamW step. Both start from the same weights. Blocks of
--steps steps alternate (ours, minimal, ours, ...) so that load from other processes hits both alike;
the median block is reported.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from pipeline.recipe import load_recipe
from pipeline.tracking import Tracker
from stages.data.shards import ShardSet, TrainWindows, build_shards
from stages.lm.bpe import train_bpe
from stages.lm.model import build_model
from stages.lm.optim import make_optimizer, make_scheduler
from stages.pretrain import _lr_used, _train_step, accum_steps
from stages.tokenizer import collect_texts

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def setup(work: Path, recipe_path: str):
    recipe = load_recipe(recipe_path, ["data.max_documents=300"])
    train, _ = collect_texts(recipe.data, recipe.seed, 2_000_000, 0)
    tokenizer = train_bpe(train, recipe.tokenizer.vocab_size)
    shards = ShardSet(build_shards(recipe.data, recipe.seed, tokenizer, work / "shards", log=lambda m: None,
                                   progress_bar=False))
    torch.manual_seed(0)
    return recipe, tokenizer, shards, build_model(recipe.model, tokenizer)


def ours(recipe, model, shards, work: Path):
    """A closure running one step of the stage's loop; returns tokens per step."""
    cfg, seq_len = recipe.pretrain, recipe.model.seq_len
    acc = Accelerator(cpu=True)
    accum = accum_steps(cfg, seq_len, 1)
    windows = TrainWindows(shards, seq_len, recipe.seed)
    opt = make_optimizer(model, cfg.optim)
    sched = make_scheduler(opt, cfg.optim, 10**6)
    model, opt = acc.prepare(model, opt)
    tracker = Tracker("pretrain", work / "ours", work, "bench", {}, None, echo=False)
    step_tokens = accum * cfg.micro_batch_size * seq_len
    state = {"step": 0}

    def step():
        t0 = time.perf_counter()
        loss, grad_norm = _train_step(model, opt, sched, acc, windows, state["step"], accum, cfg)
        dt = time.perf_counter() - t0
        state["step"] += 1
        tracker.log({"train/loss": loss, "train/lr": _lr_used(sched), "train/grad_norm": grad_norm,
                     "train/tokens_per_s": step_tokens / dt}, step=state["step"], total=10**6)
    return step, step_tokens


def minimal(recipe, model, shards):
    cfg, T = recipe.pretrain, recipe.model.seq_len
    data = torch.from_numpy(shards.head("train").astype("int64"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    B = cfg.micro_batch_size * ((cfg.total_batch_tokens or cfg.micro_batch_size * T) // (cfg.micro_batch_size * T))
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(len(data) - T - 1, (B,), generator=gen)
        batch = torch.stack([data[i:i + T + 1] for i in idx.tolist()])  # (B, T+1)
        logits = model(input_ids=batch[:, :-1]).logits                   # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return step, B * T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/tiny.yaml")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per side (alternating)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe, tokenizer, shards, model = setup(work, args.recipe)
        sides = {"ours": ours(recipe, model, shards, work), "minimal": minimal(recipe, copy.deepcopy(model), shards)}
        for fn, _ in sides.values():  # warm-up: allocator, first-call overheads
            fn()
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (fn, tokens) in sides.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                rates[name].append(args.steps * tokens / (time.perf_counter() - t0))
    med = {name: statistics.median(r) for name, r in rates.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {n_params / 1e6:.2f}M params, {sides['ours'][1]:,} tokens/step, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name in sides:
        print(f"{name:>8}: {med[name]:,.0f} tokens/s  (blocks: {', '.join(f'{r:,.0f}' for r in rates[name])})")
    print(f"ratio ours/minimal: {med['ours'] / med['minimal']:.3f}")


if __name__ == "__main__":
    main()
