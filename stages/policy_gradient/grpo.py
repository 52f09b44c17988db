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
faster at equal settings (bench/rl_step.py measures both in one run; docs/benchmarks.md). (3) GRPO and
PPO share one rollout module (stages/policy_gradient/rollout.py: sampling, tensors, log-probs, the prompt cursor).

Departures from the paper: the loss is normalised over all sampled tokens of the batch by default
(`loss_type: token`, as DAPO / Dr. GRPO, so long answers are not down-weighted); `loss_type:
sequence` is the paper's per-sequence mean. `scale_rewards: false` drops the std division (Dr. GRPO).
The KL term is the paper's k3 estimator, added per token. Logprobs use logits / temperature so the
ratio is taken against the distribution that was sampled (as TRL).
"""
from __future__ import annotations

import time

import torch

from pipeline.distributed import mean_over_ranks
from stages.lm import losses
from stages.policy_gradient.rollout import (
    PromptCursor,
    RLRun,
    batched_logps,
    checkpoint_loop,
    collate,
    completion_logps,
    gold_rewards,
    resume_loop,
    rows,
    sample_groups,
)


# ---------------------------------------------------------------- one GRPO update
def grpo_update(policy, batch: dict, advantages: torch.Tensor, cfg, optimizer, accelerator,
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
              seed: int | None = None, sampler=None, search=None) -> tuple[dict[str, float], dict]:
    """Sample G completions of each task, score, and update: (metrics, rollout) for one RL step."""
    G = cfg.num_generations
    t0 = time.time()
    comps, prompt_texts, fields = sample_groups(accelerator.unwrap_model(policy), tokenizer, tasks, cfg, G, seed, sampler,
                                                search)
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


def train(run: RLRun) -> dict[str, float]:
    """The GRPO loop: rl.max_steps rollout batches, each followed by rl.ppo_epochs updates."""
    cfg, accelerator, ctx = run.cfg, run.accelerator, run.ctx
    run.policy, run.optimizer = accelerator.prepare(run.policy, run.optimizer)
    reference = run.reference if cfg.beta > 0 else None  # the KL term is the only use of the reference
    cursor = PromptCursor(len(run.tasks), cfg.prompts_per_step, ctx.seed, accelerator.process_index)
    done, saved = resume_loop(run, cursor)
    last, tokens = {}, saved.get("tokens", 0.0)
    for step in range(done + 1, cfg.max_steps + 1):
        indices, seed = cursor.take(step)
        picked = [run.tasks[i] for i in indices]
        metrics, r = grpo_step(run.policy, reference, run.tokenizer, picked, run.reward_mix, cfg, accelerator,
                               run.optimizer, cfg.micro_batch_size, seed=seed, sampler=run.sampler, search=run.search)
        metrics = mean_over_ranks(accelerator, metrics)  # each rank sampled its own prompts
        tokens += metrics["train/completion_len"] * len(picked) * cfg.num_generations * accelerator.num_processes
        run.scheduler.step()
        metrics["train/lr"] = run.scheduler.get_last_lr()[0]
        if run.monitor is not None and "rm" in r["parts"]:
            gold = gold_rewards(r["parts"], r["prompts"], r["comps"], r["fields"])
            metrics.update(run.monitor.update(step, r["parts"]["rm"], gold, r["kl"], r["mean_length"]))
        ctx.tracker.log(metrics, step=step, total=cfg.max_steps)
        last = metrics
        if run.monitor is not None and run.monitor.should_stop:
            ctx.log(f"stopped at step {step}: reward hacking (rl.stop_on_hacking)")
            break
        checkpoint_loop(run, step, cursor, tokens=tokens)
    last["train/wall_s"] = time.time() - ctx.tracker.start  # training time, a resumed run's earlier part included
    last["train/steps"] = step
    last["train/tokens"] = tokens  # sampled completion tokens trained on, all ranks
    return last
