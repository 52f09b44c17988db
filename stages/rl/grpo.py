"""GRPO on verifiable rewards (DeepSeekMath, Shao et al. 2024; DeepSeek-R1), our own loop.

    lifecycle run recipes/tiny.yaml --stages rl            # rl.algorithm: grpo (the default)

Each step: take `prompts_per_step` training prompts, sample G = `num_generations` completions of each
with the calculator tool live (stages.lm.generation), score them with the reward mix (reward/combine.py),
turn rewards into group-normalised advantages, and take one clipped policy-gradient step per
`ppo_epochs` (the paper's mu), with an optional k3 KL penalty to the frozen reference.

Why our loop and not TRL's GRPOTrainer: (1) the calculator runs inside our sampler, so a tool call
costs nothing extra; TRL's tool loop parses JSON tool calls after a full generation and generates
again, and it does not know our <|calc|> format; the tool's tokens come back as `tool_mask` and
are excluded from logprobs, KL and loss here, in one place. (2) On the tiny recipe our step is
faster at equal settings (bench/rl_step.py measures both in one run; docs/benchmarks.md). (3) One
loop serves GRPO and PPO (stages/ppo.py reuses the rollout, collate and logprob code below).

Departures from the paper: the loss is normalised over all sampled tokens of the batch by default
(`loss_type: token`, as DAPO / Dr. GRPO, so long answers are not down-weighted); `loss_type:
sequence` is the paper's per-sequence mean. `scale_rewards: false` drops the std division (Dr. GRPO).
The KL term is the paper's k3 estimator, added per token. Logprobs use logits / temperature so the
ratio is taken against the distribution that was sampled (as TRL).
"""
from __future__ import annotations

import random
import time

import torch

from pipeline.distributed import mean_over_ranks
from stages.lm import losses
from stages.rl.rollout import collate_completions, per_token_logps


# ---------------------------------------------------------------- rollouts -> tensors
# A batch is stages.rl.rollout.collate_completions' dict: input_ids, attention_mask, completion_mask, all
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


def sample_groups(model, tokenizer, tasks, cfg, num_samples: int, seed: int | None, sampler=None):
    """G completions of each task's prompt, flattened group by group, with the reward fields.

    sampler: a stages.rl.vllm_sampler.VLLMSampler holding the policy's current weights, else HF generate."""
    from stages.data.chat import render_prompt
    from stages.lm.generation import generate
    prompts = [render_prompt(tokenizer, t.prompt_messages()) for t in tasks]
    was_training = model.training
    model.eval()
    sample = sampler.generate if sampler is not None else lambda *a, **k: generate(model, tokenizer, *a, **k)
    groups = sample(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, num_samples=num_samples, use_tools=True, seed=seed)
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
    from stages.tokenizer import END
    lengths = [len(tokenizer(t.messages[-1]["content"] + END, add_special_tokens=False)["input_ids"]) for t in tasks]
    if not lengths:
        return 0.0, 0
    return sum(n > max_new_tokens for n in lengths) / len(lengths), max(lengths)


def gold_rewards(parts, prompt_texts, comps, fields):
    """The verifier's scores for the monitor: from the mix when it has them, else computed here."""
    if "verifier" in parts:
        return parts["verifier"]
    from reward.verifiers import verifier_reward
    return verifier_reward(prompt_texts, [c.text for c in comps], **fields)


# ---------------------------------------------------------------- one GRPO update
def grpo_update(policy, batch: RolloutBatch, advantages: torch.Tensor, cfg, optimizer, accelerator,
                ref_logps=None, old_logps=None, micro: int = 64) -> dict[str, float]:
    """One optimizer step over the whole batch in micro-batches; loss normalised over the full batch."""
    n = batch["input_ids"].size(0)
    # [scale-out] each rank holds its own prompts' groups; DDP averages gradients over ranks, so the
    # token-level loss divides by the mean token count per rank: the sum over ranks then equals one
    # process's loss over the whole global batch (per-sequence means need no fix: equal rows per rank).
    tokens = accelerator.reduce(batch["completion_mask"].sum(), "mean") if accelerator.num_processes > 1 \
        else batch["completion_mask"].sum()
    norm = {"num_tokens": tokens.clamp(min=1.0), "num_seqs": float(n)}
    totals = {"loss": 0.0, "clipfrac": 0.0, "kl": 0.0}
    # A completion with advantage 0 (its group's rewards were all equal) adds nothing to the clipped
    # surrogate, so without a KL term its forward/backward is wasted: skip it (30-50% of the rows on the
    # tiny recipe). The normalisers above still count every row, so the loss and gradient are unchanged.
    # Not under DDP: every rank must run the same number of backward passes.
    keep = torch.arange(n, device=advantages.device)
    if ref_logps is None and accelerator.num_processes == 1:
        keep = keep[advantages != 0]
    for i in range(0, len(keep), micro):
        idx = keep[i:i + micro]
        mb = rows(batch, idx)
        logps = completion_logps(policy, mb, cfg.temperature)
        old = old_logps[idx] if old_logps is not None else logps.detach()
        ref = ref_logps[idx] if ref_logps is not None else None
        loss, stats = losses.grpo_loss(logps, old, advantages[idx], mb["completion_mask"], ref_per_token_logps=ref,
                                       beta=cfg.beta, clip_eps=cfg.clip_eps, loss_type=cfg.loss_type, **norm)
        accelerator.backward(loss)
        share = mb["input_ids"].size(0) / n
        totals["loss"] += float(loss.detach())
        totals["clipfrac"] += stats["clipfrac"] * share
        totals["kl"] += stats.get("kl", 0.0) * share
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    totals["grad_norm"] = float(grad_norm)
    if ref_logps is None:
        totals.pop("kl")
    return totals


def grpo_step(policy, ref_model, tokenizer, tasks, reward_mix, cfg, accelerator, optimizer, micro: int = 64,
              seed: int | None = None, sampler=None) -> tuple[dict[str, float], dict]:
    """Sample G completions of each task, score, and update: (metrics, rollout) for one RL step."""
    G = cfg.num_generations
    t0 = time.time()
    comps, prompt_texts, fields = sample_groups(accelerator.unwrap_model(policy), tokenizer, tasks, cfg, G, seed, sampler)
    gen_s = time.time() - t0
    total, parts = reward_mix(prompt_texts, [c.text for c in comps], **fields)
    rewards = torch.tensor(total)
    advantages = losses.group_advantages(rewards, G, scale=cfg.scale_rewards).to(accelerator.device)
    batch = collate(comps, tokenizer.pad_token_id, accelerator.device)
    ref_logps = batched_logps(ref_model, batch, micro, cfg.temperature) if ref_model is not None else None
    epochs = cfg.ppo_epochs or 1
    old_logps = batched_logps(policy, batch, micro, cfg.temperature) if epochs > 1 else None
    for _ in range(epochs):
        stats = grpo_update(policy, batch, advantages, cfg, optimizer, accelerator, ref_logps, old_logps, micro)
    if sampler is not None:
        sampler.load_weights(accelerator.unwrap_model(policy))  # the next step samples from the updated policy
    lengths = batch["completion_mask"].sum(-1)
    metrics = {"train/loss": stats["loss"], **reward_mix.log_metrics(total, parts),
               "train/zero_var_groups": losses.zero_variance_fraction(rewards, G),
               "train/reward_std": float(rewards.view(-1, G).std(dim=1).mean()) if G > 1 else 0.0,
               "train/clipfrac": stats["clipfrac"], "train/grad_norm": stats["grad_norm"],
               "train/completion_len": float(lengths.mean()),
               "train/gen_frac": gen_s / max(time.time() - t0, 1e-9)}
    if "kl" in stats:
        metrics["train/kl"] = stats["kl"]
    rollout = dict(comps=comps, prompts=prompt_texts, fields=fields, parts=parts, kl=stats.get("kl"),
                   mean_length=float(lengths.mean()))
    return metrics, rollout


def train(policy, ref_model, tokenizer, tasks, reward_mix, cfg, ctx, accelerator, optimizer, scheduler,
          monitor=None, micro: int = 64, sampler=None) -> dict[str, float]:
    """The GRPO loop: rl.max_steps rollout batches, each followed by rl.ppo_epochs updates."""
    rng = random.Random(ctx.seed + 1000 * accelerator.process_index)
    order = list(range(len(tasks)))
    rng.shuffle(order)
    start, last, tokens = time.time(), {}, 0.0
    for step in range(1, cfg.max_steps + 1):
        picked = [tasks[order[((step - 1) * cfg.prompts_per_step + j) % len(order)]]
                  for j in range(cfg.prompts_per_step)]
        metrics, r = grpo_step(policy, ref_model, tokenizer, picked, reward_mix, cfg, accelerator, optimizer,
                               micro, seed=rng.randrange(2**31), sampler=sampler)
        metrics = mean_over_ranks(accelerator, metrics)  # each rank sampled its own prompts
        tokens += metrics["train/completion_len"] * len(picked) * cfg.num_generations * accelerator.num_processes
        scheduler.step()
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        if monitor is not None and "rm" in r["parts"]:
            gold = gold_rewards(r["parts"], r["prompts"], r["comps"], r["fields"])
            metrics.update(monitor.update(step, r["parts"]["rm"], gold, r["kl"], r["mean_length"]))
        ctx.tracker.log(metrics, step=step, total=cfg.max_steps)
        last = metrics
        if monitor is not None and monitor.should_stop:
            ctx.log(f"stopped at step {step}: reward hacking (rl.stop_on_hacking)")
            break
    last["train/wall_s"] = time.time() - start
    last["train/steps"] = step
    last["train/tokens"] = tokens  # sampled completion tokens trained on, all ranks
    return last
