"""RL rollouts, one module for GRPO and PPO: the loop state both take, the prompt cursor, sampling G
completions per prompt (tools live: the calculator, and search when the policy dir has an index), and
the tensors built from them.

A batch is a dict of (N, L) right-padded prompt+completion rows: input_ids, attention_mask and
completion_mask, which is 1 on the tokens the policy sampled and 0 on the prompt, padding and tool
output, so the tools' tokens get no logprob, no KL and no loss.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from reward.verifiers import verifier_reward
from stages.data.chat import render_prompt
from stages.data.special_tokens import END
from stages.lm.generation import generate


@dataclass
class RLRun:
    """What a GRPO or PPO loop (stages/policy_gradient/grpo.py, ppo.py: `train(run) -> metrics`) works on.

    The loop prepares `policy` and `optimizer` with the accelerator and leaves the prepared ones here."""
    policy: Any                   # the HF causal LM being trained
    reference: Any                # frozen copy of the starting policy (KL, PPO's reward leash)
    tokenizer: Any
    tasks: list                   # training tasks (stages.data.tasks.Task)
    reward_mix: Any               # reward.combine.RewardMix: rewards per completion, and its parts
    cfg: Any                      # the recipe's rl section (pipeline.schema.RLStage)
    ctx: Any                      # pipeline.context.StageContext: seed, log, tracker
    accelerator: Any
    optimizer: Any
    scheduler: Any
    monitor: Any = None           # stages.policy_gradient.monitor.HackingMonitor when an RM is among the rewards
    sampler: Any = None           # stages.policy_gradient.vllm_sampler.VLLMSampler, else HF generate
    search: Any = None            # stages.tools.search.SearchIndex answering <|search|> calls (the policy dir's)
    value_model_dir: str | None = None  # PPO: the RM dir its value model starts from
    ptx_max_length: int = 256     # PPO: tokens per SFT conversation in the ptx term
    checkpoints: Any = None       # stages.lm.checkpoints.Checkpoints in <stage>.tmp/checkpoints; None = never saved
    extra: dict = field(default_factory=dict)  # carried in every checkpoint as it is (the eval before training)


class PromptCursor:
    """The training prompts in a seeded shuffled order, `per_step` at a time, cycling; and a sampling seed
    per step. Each rank draws its own order (seed + 1000 x rank), so ranks train on different prompts."""

    def __init__(self, n_tasks: int, per_step: int, seed: int, rank: int = 0):
        self.rng = random.Random(seed + 1000 * rank)
        self.order = list(range(n_tasks))
        self.rng.shuffle(self.order)
        self.per_step = per_step

    def take(self, step: int) -> tuple[list[int], int]:
        """(task indices, sampling seed) of step 1, 2, ..."""
        start = (step - 1) * self.per_step
        picked = [self.order[(start + j) % len(self.order)] for j in range(self.per_step)]
        return picked, self.rng.randrange(2**31)


def resume_loop(run: RLRun, cursor: PromptCursor) -> tuple[int, dict]:
    """After prepare: load the last checkpoint (models, optimizers, scheduler, RNG states) and the loop's
    own state (the cursor's RNG, the monitor); returns (steps done, the loop state saved with them)."""
    if run.checkpoints is None:
        run.ctx.tracker.start = time.time()  # train/wall_s counts training, not the set-up before it
        return 0, {}
    run.accelerator.register_for_checkpointing(run.scheduler)
    start = run.checkpoints.resume(run.ctx)
    if not start:
        return 0, {}
    state = run.checkpoints.loop_state()
    cursor.rng.setstate(state["cursor"])
    if run.monitor is not None:
        run.monitor.load_state_dict(state["monitor"])
    if run.sampler is not None:  # the engine still holds the start weights
        run.sampler.load_weights(run.accelerator.unwrap_model(run.policy))
    return start, state


def checkpoint_loop(run: RLRun, step: int, cursor: PromptCursor, **loop) -> None:
    """A checkpoint after `step` when one is due, carrying the cursor, the monitor and `loop` (counters)."""
    if run.checkpoints is not None and run.checkpoints.due(step, run.cfg.max_steps):
        state = {**run.extra, **loop, "cursor": cursor.rng.getstate(),
                 "monitor": run.monitor.state_dict() if run.monitor is not None else None}
        run.checkpoints.save(step, run.ctx, state)


def collate_completions(completions, pad_id: int) -> dict[str, torch.Tensor]:
    """Completions (stages.lm.generation.Completion) -> right-padded prompt+completion tensors.

    input_ids, attention_mask, completion_mask: (N, L), aligned; completion_mask is 1 on tokens the policy
    sampled (not the prompt, not padding, not tool output)."""
    seqs = [list(c.prompt_ids) + list(c.completion_ids) for c in completions]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)   # (N, L)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)    # (N, L)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.long)   # (N, L)
    for i, (c, s) in enumerate(zip(completions, seqs)):
        p, t = len(c.prompt_ids), len(c.completion_ids)
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
        completion_mask[i, p:p + t] = 1 - torch.tensor(c.tool_mask, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def per_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    completion_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token_t | tokens_<t) for every position, (N, L) aligned with input_ids; 0 where completion_mask is 0.

    Works with left or right padding (positions count real tokens only). Grad flows if enabled."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                        # (N, L)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, :-1, :].float() / temperature              # (N, L-1, V): predicts t+1
    targets = input_ids[:, 1:]                                                          # (N, L-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N, L-1)
    logps = torch.cat([logps.new_zeros((logps.size(0), 1)), logps], dim=1)              # (N, L): position 0 has none
    return logps * completion_mask.to(logps.dtype)


# ---------------------------------------------------------------- rollouts -> tensors
# A batch is collate_completions' dict: input_ids, attention_mask, completion_mask, all
# (N, L) right-padded prompt+completion rows; completion_mask is 0 on tool output, so the calculator's
# tokens get no logprob, no KL and no loss.

def collate(completions, pad_id: int, device=None) -> dict[str, torch.Tensor]:
    batch = collate_completions(completions, pad_id)
    batch["completion_mask"] = batch["completion_mask"].float()
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def rows(batch: dict, idx) -> dict:
    """The rows `idx` (a slice or an index tensor) of every tensor in the batch."""
    return {k: v[idx] for k, v in batch.items()}


def completion_logps(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """(N, L) log-probs of the sampled tokens (0 elsewhere); grad flows if enabled."""
    return per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], temperature)


@torch.no_grad()
def batched_logps(model, batch: dict, micro: int, temperature: float = 1.0) -> torch.Tensor:
    """completion_logps without grad, `micro` rows at a time: (N, L)."""
    n = batch["input_ids"].size(0)
    return torch.cat([completion_logps(model, rows(batch, slice(i, i + micro)), temperature)
                      for i in range(0, n, micro)])


def sample_groups(model, tokenizer, tasks, cfg, num_samples: int, seed: int | None, sampler=None, search=None):
    """G completions of each task's prompt, flattened group by group, with the reward fields.

    sampler: a stages.policy_gradient.vllm_sampler.VLLMSampler holding the policy's current weights, else HF generate.
    search: the stages.tools.search.SearchIndex that answers <|search|> calls (None: they get an error line)."""
    prompts = [render_prompt(tokenizer, t.prompt_messages()) for t in tasks]
    was_training = model.training
    model.eval()
    sample = sampler.generate if sampler is not None else lambda *a, **k: generate(model, tokenizer, *a, **k)
    groups = sample(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, num_samples=num_samples, use_tools=True, seed=seed, search=search)
    model.train(was_training)
    flat = [c for group in groups for c in group]
    flat_tasks = [t for t in tasks for _ in range(num_samples)]
    prompt_texts = [tokenizer.decode(p) for p in prompts for _ in range(num_samples)]
    fields = dict(tasks=flat_tasks, answers=[t.answer for t in flat_tasks],
                  families=[t.family for t in flat_tasks], messages=[t.prompt_messages() for t in flat_tasks])
    return flat, prompt_texts, fields


def reference_overflow(tokenizer, tasks, max_new_tokens: int) -> tuple[float, int]:
    """(share of tasks whose reference answer, <|end|> included, needs more than max_new_tokens tokens,
    the longest one in tokens). Such prompts are cut off before their "Answer:" line whatever the policy
    does, so they always score 0 and carry no GRPO signal: the budget must cover the reference."""
    lengths = [len(tokenizer(t.messages[-1]["content"] + END, add_special_tokens=False)["input_ids"]) for t in tasks]
    if not lengths:
        return 0.0, 0
    return sum(n > max_new_tokens for n in lengths) / len(lengths), max(lengths)


def gold_rewards(parts, prompt_texts, comps, fields):
    """The verifier's scores for the monitor: from the mix when it has them, else computed here."""
    if "verifier" in parts:
        return parts["verifier"]
    return verifier_reward(prompt_texts, [c.text for c in comps], **fields)
