"""AdamW with decay / no-decay parameter groups and learning-rate schedules (warmup + cosine, WSD, ...).

    optimizer = make_optimizer(model, recipe.pretrain.optim, device)
    scheduler = make_scheduler(optimizer, recipe.pretrain.optim, max_steps)   # a LambdaLR, checkpointable

Weight decay applies to matrices only: biases, norm gains and embeddings (also a tied output head) are
not decayed (GPT-2 / nanoGPT practice). WSD ("warmup-stable-decay", Hu et al. 2024, MiniCPM) holds the
peak lr and decays linearly to lr * min_lr_ratio over the last `decay_fraction` of steps; the paper's
decay is exponential-ish, linear is the common simplification.
"""
from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and everything else (biases, norms, embeddings)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():  # .parameters() yields a tied weight once
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and id(param) not in embedding_ids else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg, device: str = "cpu") -> torch.optim.AdamW:
    """AdamW over param_groups; the fused CUDA kernel on GPU (one launch for all parameters)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=(device == "cuda"))


def lr_multiplier(step: int, cfg, max_steps: int) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return 1.0 - (1 - floor) * progress
    # wsd: stable at the peak, then a linear decay over the last decay_fraction of all steps
    decay_steps = max(1, round(cfg.decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - floor) * min(1.0, (step - decay_start + 1) / decay_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, max_steps))
