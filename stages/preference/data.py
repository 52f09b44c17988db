"""Preference data for DPO: ranked prompts from the stage's own rollouts and chosen/rejected datasets,
encoded as token ids with completion masks, batched as (N, T) rows + a (B, K) rank grid, and the
summed log-probs of every completion under a model.

    ranked = gather_preferences(recipe.dpo, recipe.seed, "runs/tiny/sft", ctx, accelerator)
    examples = encode(ranked, tokenizer, max_length=512)        # list[PrefExample]
    batch = collate(examples[:4], tokenizer.pad_token_id)       # input_ids, attention_mask, completion_mask, ranks, slots
    logps = to_grid(completion_logps(model, batch), batch)      # (B, K) summed log-probs, 0 in padded slots

Rollouts come from stages/rm/rollouts.py (resumable, keyed by policy and sampling) into
runs/<name>/rollouts_<stage>.jsonl, a file of the DPO stage's own: the rm stage's rollouts.jsonl has its
own settings, and two users of one file would move each other's records aside. Rankings come from
reward/ranking.py (`dpo.rankers`: verifier tiers, a judge, human logs), pairs from `dpo.pairs_datasets`
(load_pairs' formats) as K=2 rankings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import UserError
from reward.ranking import Ranked, collect_rankings, load_pairs, ranking_pairs
from stages.data.chat import render_completion, render_text
from stages.policy_gradient.rollout import per_token_logps
from stages.rm.rollouts import read_rollouts, sample_rollouts


@dataclass
class PrefExample:
    seqs: list[list[int]]     # prompt + completion token ids, one per completion
    masks: list[list[int]]    # 1 on the completion's own tokens (not prompt, not tool output), aligned with seqs
    ranks: list[int]          # 0 = best, equal = tie
    family: str
    gold: list[int] | None    # verifier tiers (higher = better), for held-out accuracy against gold
    source: str


def gather_preferences(cfg, seed: int, model_dir: str, ctx, accelerator) -> list[Ranked]:
    """Ranked prompts: K rollouts per prompt from the start policy ranked by cfg.rankers, plus pairs datasets."""
    rollouts, path = [], ctx.run_dir / f"rollouts_{ctx.stage}.jsonl"
    if {"verifier", "judge"} & set(cfg.rankers):
        if accelerator.is_main_process:
            rollouts = sample_rollouts(cfg, seed, model_dir, path, str(accelerator.device), log=ctx.log)
        accelerator.wait_for_everyone()
        rollouts = rollouts or read_rollouts(path)[:cfg.num_prompts]
    ranked = collect_rankings(cfg, rollouts, str(accelerator.device), log=ctx.log) if cfg.rankers else []
    for spec in cfg.pairs_datasets:
        part = load_pairs(spec, cfg.pairs_max_examples)
        ctx.log(f"preferences: {len(part)} chosen/rejected pairs from {spec}")
        ranked += part
    ranked = [r for r in ranked if ranking_pairs(r.ranks)]  # all-tied prompts carry no preference
    if not ranked:
        raise UserError("dpo.rankers / dpo.pairs_datasets: no prompt has two differently ranked completions; "
                        "more prompts, a higher dpo.temperature or dpo.k, or dpo.tie_break: shorter")
    return ranked


def encode(ranked: list[Ranked], tokenizer, max_length: int) -> list[PrefExample]:
    """Token ids and completion masks of every completion; longer than max_length keeps the last tokens
    (the answer is at the end; at most the start of the prompt is lost)."""
    out = []
    for r in ranked:
        prompt = render_text(tokenizer, r.prompt_messages, add_generation_prompt=True) if r.prompt_messages else ""
        rows = [render_completion(tokenizer, prompt, c) for c in r.completions]
        if not r.prompt_messages:  # whole-text pairs: no prompt, every token is the policy's
            rows = [(ids, [1] * len(ids)) for ids, _ in rows]
        out.append(PrefExample([ids[-max_length:] for ids, _ in rows], [m[-max_length:] for _, m in rows],
                               list(r.ranks), r.family, r.gold, r.source))
    return out


def collate(examples: list[PrefExample], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """B prompts with up to K completions -> N = sum K right-padded rows (one forward each) + (B, K) ranks."""
    k = max(len(e.seqs) for e in examples)
    seqs = [s for e in examples for s in e.seqs]
    masks = [m for e in examples for m in e.masks]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)       # (N, T)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)         # (N, T)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.float)       # (N, T)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
        completion_mask[i, :len(m)] = torch.tensor(m, dtype=torch.float)
    ranks = torch.full((len(examples), k), -1, dtype=torch.long)               # (B, K), -1 = no completion
    slots = []                                                                  # (N,) position in the (B*K) grid
    for b, e in enumerate(examples):
        ranks[b, :len(e.ranks)] = torch.tensor(e.ranks, dtype=torch.long)
        slots += [b * k + j for j in range(len(e.seqs))]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
             "ranks": ranks, "slots": torch.tensor(slots, dtype=torch.long)}
    return {key: v.to(device) for key, v in batch.items()} if device is not None else batch


def completion_logps(model, batch: dict) -> torch.Tensor:
    """(N,) summed log-probs of each row's completion tokens; grad flows if enabled."""
    logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])  # (N, T)
    return logps.sum(dim=-1)


def to_grid(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """(N,) per-completion values -> the (B, K) grid of batch["ranks"] (0 in padded slots)."""
    b, k = batch["ranks"].shape
    return values.new_zeros(b * k).scatter(0, batch["slots"], values).view(b, k)


@torch.no_grad()
def example_logps(model, examples: list[PrefExample], pad_id: int, device, prompts_per_batch: int = 8
                  ) -> list[torch.Tensor]:
    """Summed completion log-probs of every example's completions, (K,) per example, on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(examples), prompts_per_batch):
        chunk = examples[start:start + prompts_per_batch]
        values = completion_logps(model, collate(chunk, pad_id, device)).float().cpu()
        pos = 0
        for e in chunk:
            out.append(values[pos:pos + len(e.seqs)])
            pos += len(e.seqs)
    model.train(was_training)
    return out
