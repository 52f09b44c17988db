"""The ranking page's queue, least sure first: people rank where the reward model cannot tell.

    lifecycle rank recipes/tiny.yaml --order uncertain [--reward-model runs/tiny/rm]

Uncertainty sampling for preference labels: the RM is least sure about a prompt when its two best
distinct completions score nearly the same, so a person's ranking there settles the most. For each prompt
the margin is the RM's reward of its best distinct completion minus the second best (each distinct text
scored once, read as the RM reads it: the rendered chat prompt + the completion text); prompts go
smallest margin first, equal margins keep the rollouts' order. A prompt with fewer than two distinct
completions has nothing to rank: margin inf, last (the page leaves it out anyway).
"""
from __future__ import annotations

import math
from typing import Callable

from reward.model_scorer import RewardModelScorer
from reward.ranking_page import distinct_indices, texts_of
from stages.data.chat import render_text


def margins(prompts: list[dict], score: Callable[[list[str], list[str]], list[float]],
            render: Callable[[dict], str]) -> list[float]:
    """Top-2 reward margin of each prompt's distinct completions (inf with fewer than two), scored in one call."""
    pairs = [(render(p), texts_of(p)[i]) for p in prompts for i in distinct_indices(texts_of(p))]
    rewards = iter(score([a for a, _ in pairs], [b for _, b in pairs]) if pairs else [])
    out = []
    for prompt in prompts:
        top = sorted((next(rewards) for _ in distinct_indices(texts_of(prompt))), reverse=True)
        out.append(top[0] - top[1] if len(top) > 1 else math.inf)
    return out


def order_by_uncertainty(prompts: list[dict], score, render) -> list[dict]:
    """The prompts, smallest top-2 margin first (stable)."""
    gaps = margins(prompts, score, render)
    return [prompts[i] for i in sorted(range(len(prompts)), key=lambda i: gaps[i])]


def rm_order(prompts: list[dict], rm_dir: str, max_length: int = 1024, device: str | None = None,
             log=print) -> list[dict]:
    """order_by_uncertainty with a trained reward-model dir (reward/model_scorer.py), reading the last
    max_length tokens as the rm stage does (rm.max_length)."""
    scorer = RewardModelScorer(rm_dir, device=device, max_length=max_length)

    def render(prompt: dict) -> str:
        messages = prompt.get("prompt_messages")
        return render_text(scorer.tokenizer, messages, add_generation_prompt=True) if messages else prompt.get(
            "prompt", "")

    ordered = order_by_uncertainty(prompts, scorer, render)
    log(f"ranking queue: {len(prompts)} prompts ordered by the margin of {rm_dir}'s two best distinct completions, "
        "smallest first")
    return ordered
