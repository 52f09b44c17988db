"""A GRPO update stage for the scale-out tests: the real stages.policy_gradient.grpo.grpo_update on a fixed rollout.

The global rollout is 4 prompts x G=2 completions of different lengths (seeded, so every process count
builds the same one); each rank takes whole prompt groups (pipeline.distributed.rank_slice), as the RL
stage's ranks sample their own prompts. Token-level loss normalisation must then count the tokens of
all ranks, or 2 processes would weight tokens differently from 1. Reads recipe.pretrain (max_steps,
optim.lr) and recipe.model sizes; writes loss/<step> metrics and the gathered model dir.
"""
from __future__ import annotations

from types import SimpleNamespace

PROMPTS, G, VOCAB = 4, 2, 97


def _rollout(seed: int):
    import torch

    from stages.lm.generation import Completion
    from stages.lm.losses import group_advantages
    gen = torch.Generator().manual_seed(seed)
    comps = []
    for i in range(PROMPTS * G):
        prompt = torch.randint(0, VOCAB, (3,), generator=gen).tolist()
        length = 2 + (7 * i + 3) % 9                     # 2..10 tokens: the ranks' token counts differ
        completion = torch.randint(0, VOCAB, (length,), generator=gen).tolist()
        comps.append(Completion(prompt, completion, [0] * length, "", True))
    rewards = torch.rand(PROMPTS * G, generator=gen)
    return comps, group_advantages(rewards, G, scale=True)


def train(recipe, inputs, ctx):
    import torch
    from accelerate import Accelerator

    from pipeline.distributed import configure_engine, rank_slice, save_model_gathered
    from stages.policy_gradient.grpo import grpo_update
    from stages.policy_gradient.rollout import collate
    from tests.dist_stage import _model

    accelerator = Accelerator()
    model = _model(recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.pretrain.optim.lr)
    configure_engine(accelerator, micro_batch_size=G * PROMPTS // accelerator.num_processes, grad_clip=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    comps, advantages = _rollout(recipe.seed)
    mine = rank_slice(PROMPTS, accelerator, "prompts")
    rows = slice(mine.start * G, mine.stop * G)
    batch = collate(comps[rows], pad_id=0, device=accelerator.device)
    cfg = SimpleNamespace(temperature=1.0, beta=0.0, clip_eps=0.2, loss_type="token", optim=SimpleNamespace(grad_clip=0.0))
    metrics = {}
    for step in range(1, recipe.pretrain.max_steps + 1):
        stats = grpo_update(model, batch, advantages[rows].to(accelerator.device), cfg, optimizer, accelerator, micro=3)
        metrics[f"loss/{step}"] = accelerator.reduce(torch.tensor(stats["loss"], device=accelerator.device), "mean").item()
    save_model_gathered(accelerator, model, None, ctx.out_dir)
    return metrics
