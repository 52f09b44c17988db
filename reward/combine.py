"""Weighted mixes of reward parts, each part logged on its own.

    mix = RewardMix({"verifier": 1.0, "format": 0.1, "mypkg.rewards:brevity": 0.5})
    total, parts = mix(prompts, completions, tasks=tasks)   # parts: {"verifier": [...], ...}

A part is one of
- "verifier": the task's checker (reward/verifiers.py), 1/0;
- "format":   a well-formed final "Answer:" line, 1/0;
- "rm":       the trained reward model's score (reward/model_scorer.py; needs `reward_model`);
- "module:function": a user reward, imported by path, called as
  fn(prompts, completions, **fields) -> list[float]  (one float per completion).
prompts are the rendered prompt texts, completions the decoded completion texts (tool calls and
results included). Fields passed by the RL stage: tasks (stages.data.tasks.Task, one per completion),
answers, families, messages (the prompt conversation). A function should accept **kwargs.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Optional

from pipeline.errors import UserError
from reward.model_scorer import load_reward_fn

RewardFn = Callable[..., list[float]]
BUILTIN = {"verifier": "reward.verifiers:verifier_reward", "format": "reward.verifiers:format_reward"}


def import_reward(spec: str, key: str = "rl.rewards") -> RewardFn:
    """Resolve "module:function" to a callable; errors name the recipe key."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise UserError(f"{key}: unknown reward '{spec}'; expected verifier, format, rm or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{key}: cannot import module '{module_name}' for reward '{spec}' ({exc})") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UserError(f"{key}: module '{module_name}' has no function '{func_name}'")
    return fn


class RewardMix:
    """sum_k w_k * part_k(prompts, completions, **fields), with every part returned for logging."""

    def __init__(self, weights: dict[str, float], reward_model: Optional[str] = None, device: str = "cpu",
                 key: str = "rl.rewards", rm_batch_size: int = 32):
        if not weights:
            raise UserError(f"{key}: no reward parts; expected e.g. {{verifier: 1.0}}")
        self.weights, self.key = dict(weights), key
        self.parts: dict[str, RewardFn] = {}
        for name in weights:
            if name == "rm":
                if reward_model is None:
                    raise UserError(f"{key}: 'rm' needs a trained reward model (the rm stage, or rl.algorithm: ppo)")
                self.parts[name] = load_reward_fn(reward_model, device=device, batch_size=rm_batch_size)
            else:
                self.parts[name] = import_reward(BUILTIN.get(name, name), key)

    def __call__(self, prompts: list[str], completions: list[str],
                 **fields) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        for name, fn in self.parts.items():
            values = [float(v) for v in fn(prompts, completions, **fields)]
            if len(values) != len(completions):
                raise UserError(f"{self.key}: reward '{name}' returned {len(values)} values for "
                                f"{len(completions)} completions; expected one float per completion")
            if not all(math.isfinite(v) for v in values):
                raise UserError(f"{self.key}: reward '{name}' returned a non-finite value")
            parts[name] = values
        total = [sum(self.weights[name] * parts[name][i] for name in parts) for i in range(len(completions))]
        return total, parts

    @staticmethod
    def log_metrics(total: list[float], parts: dict[str, list[float]], prefix: str = "reward") -> dict[str, float]:
        """{reward/total, reward/<part>} means for the tracker."""
        out = {f"{prefix}/total": sum(total) / max(len(total), 1)}
        for name, values in parts.items():
            out[f"{prefix}/{name.replace(':', '.')}"] = sum(values) / max(len(values), 1)
        return out
