"""PPO against the reward model with a KL leash (InstructGPT, Ouyang et al. 2022), our loop on accelerate.

    lifecycle run recipes/tiny.yaml --stages rl rl.algorithm=ppo

Each step: sample `prompts_per_step` x `num_generations` completions (calculator live), score each with
the reward mix (default: the RM alone), then with the rollout frozen compute old logprobs, reference
logprobs and old values; per-token reward = -beta * (logp - ref_logp) on every sampled token plus
the sequence score on its last token; GAE(gamma, lambda) gives advantages (whitened over the batch)
and returns; `ppo_epochs` passes of shuffled micro-batches minimise the clipped policy loss plus
vf_coef * the clipped value loss (+ ptx_coef * an LM loss on SFT conversations).

The value model is the reward model with its head applied at every position (a value head on the RM
backbone, initialised from the RM, as InstructGPT); it trains beside the policy with its own AdamW.

Departures from InstructGPT: the ptx term uses the built-in SFT conversations (the policy's SFT data),
not pretraining text; the optional adaptive KL is Ziegler et al.'s proportional controller (horizon
10k samples); rewards are not rescaled by a running std (the RM is already centred on reference
answers, reward/model_scorer.py). Tool output tokens are masked out of logprobs, values and losses,
and GAE carries over them.
"""
from __future__ import annotations

import random
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.distributed import is_deepspeed, mean_over_ranks
from pipeline.errors import UserError
from stages.data.chat import render_training
from stages.lm import losses
from stages.lm.optim import make_optimizer
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


class ValueModel(torch.nn.Module):
    """A sequence-classification RM read at every position: values (N, L) aligned with input_ids, where
    values[:, t] estimates the return from the state before token t (the head on hidden state t-1)."""

    def __init__(self, rm):
        super().__init__()
        self.backbone = getattr(rm, rm.base_model_prefix)
        self.head = rm.score

    def forward(self, input_ids, attention_mask):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                      # (N, L)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state                          # (N, L, H)
        values = self.head(hidden).squeeze(-1).float()                                     # (N, L)
        return torch.cat([values.new_zeros((values.size(0), 1)), values[:, :-1]], dim=1)  # (N, L) shifted


def load_value_model(rm_dir: str, policy_tokenizer, device) -> ValueModel:
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1)
    if AutoTokenizer.from_pretrained(rm_dir).get_vocab() != policy_tokenizer.get_vocab():
        raise UserError(f"rl: the reward model {rm_dir} uses another tokenizer than the policy; PPO's value "
                        f"model reads the policy's tokens, so train the RM from the same SFT model")
    return ValueModel(rm).to(device).train()


class PtxBatches:
    """Endless (input_ids, labels) batches of SFT conversations for the ptx term; its RNG is `rng`, so a
    checkpoint can carry where it was."""

    def __init__(self, tokenizer, tasks, micro: int, max_length: int, seed: int):
        self.data = [r for r in (render_training(tokenizer, t.messages, max_length) for t in tasks) if r]
        self.rng, self.micro, self.pad_id = random.Random(seed), micro, tokenizer.pad_token_id

    def __iter__(self):
        return self

    def __next__(self):
        picked = self.rng.sample(self.data, min(self.micro, len(self.data)))
        width = max(len(ids) for ids, _ in picked)
        ids = torch.tensor([i + [self.pad_id] * (width - len(i)) for i, _ in picked])         # (B, T)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in picked])     # (B, T)
        return ids, labels


@torch.no_grad()
def make_targets(policy, reference, value_model, batch, scores, cfg, beta, micro):
    """Old logprobs/values, per-token rewards, whitened GAE advantages and returns for one rollout."""
    mask = batch["completion_mask"]
    old_logps = batched_logps(policy, batch, micro, cfg.temperature)
    ref_logps = batched_logps(reference, batch, micro, cfg.temperature)
    n = batch["input_ids"].size(0)
    old_values = torch.cat([value_model(**{k: v for k, v in rows(batch, slice(i, i + micro)).items()
                                           if k != "completion_mask"}) for i in range(0, n, micro)]) * mask
    rewards, kl = losses.ppo_token_rewards(scores, old_logps, ref_logps, mask, beta)
    advantages, returns = losses.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    advantages = losses.whiten(advantages, mask)
    return {"old_logps": old_logps, "old_values": old_values, "advantages": advantages, "returns": returns,
            "kl": kl.sum(-1)}


def ppo_epoch(policy, value_model, batch, targets, cfg, accelerator, optimizers, micro, ptx=None) -> dict:
    """One pass over the rollout in shuffled micro-batches; one optimizer step per micro-batch."""
    n = batch["input_ids"].size(0)
    order = torch.randperm(n)
    stats = {"pg_loss": 0.0, "vf_loss": 0.0, "clipfrac": 0.0, "vf_clipfrac": 0.0, "ptx_loss": 0.0}
    for i in range(0, n, micro):
        idx = order[i:i + micro]
        mb = {k: v[idx] for k, v in batch.items()}
        t = {k: v[idx] for k, v in targets.items()}
        logps = completion_logps(policy, mb, cfg.temperature)
        pg_loss, pg = losses.ppo_policy_loss(logps, t["old_logps"], t["advantages"], mb["completion_mask"],
                                             cfg.clip_eps, cfg.loss_type)
        values = value_model(mb["input_ids"], mb["attention_mask"])
        vf_loss, vf_clip = losses.value_loss(values, t["old_values"], t["returns"], mb["completion_mask"],
                                             cfg.cliprange_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        if ptx is not None:
            ids, labels = (x.to(accelerator.device) for x in next(ptx))
            ptx_loss = losses.lm_loss(policy(input_ids=ids).logits, labels)
            loss = loss + cfg.ptx_coef * ptx_loss
            stats["ptx_loss"] += float(ptx_loss.detach()) * len(idx) / n
        accelerator.backward(loss)
        for model, opt in zip((policy, value_model), optimizers):
            if cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        share = len(idx) / n
        for key, value in (("pg_loss", float(pg_loss.detach())), ("vf_loss", float(vf_loss.detach())),
                           ("clipfrac", pg["clipfrac"]), ("vf_clipfrac", vf_clip)):
            stats[key] += value * share
    return stats


def train(run: RLRun) -> dict[str, float]:
    """The PPO loop against run.value_model_dir's RM; run.policy ends up the accelerate-prepared policy."""
    cfg, accelerator, ctx, tokenizer = run.cfg, run.accelerator, run.ctx, run.tokenizer
    micro = cfg.micro_batch_size
    if is_deepspeed(accelerator):
        raise UserError("rl.distributed.engine: PPO trains two models (policy and value) with one Accelerator, "
                        "which accelerate's DeepSpeed integration does not support; use engine ddp or fsdp")
    value_model = load_value_model(run.value_model_dir, tokenizer, accelerator.device)
    value_optimizer = make_optimizer(value_model, cfg.optim, str(accelerator.device))
    run.policy, value_model, run.optimizer, value_optimizer = accelerator.prepare(run.policy, value_model,
                                                                                  run.optimizer, value_optimizer)
    policy = run.policy
    ptx = PtxBatches(tokenizer, run.tasks, micro, run.ptx_max_length, ctx.seed) if cfg.ptx_coef > 0 else None
    cursor = PromptCursor(len(run.tasks), cfg.prompts_per_step, ctx.seed, accelerator.process_index)
    done, saved = resume_loop(run, cursor)  # the value model and its optimizer are in the checkpoint too
    if ptx is not None and done:
        ptx.rng.setstate(saved["ptx"])
    beta, last, epochs, tokens = saved.get("beta", cfg.beta), {}, cfg.ppo_epochs or 2, saved.get("tokens", 0.0)
    for step in range(done + 1, cfg.max_steps + 1):
        indices, seed = cursor.take(step)
        picked = [run.tasks[i] for i in indices]
        comps, prompts, fields = sample_groups(accelerator.unwrap_model(policy), tokenizer, picked, cfg,
                                               cfg.num_generations, seed=seed, sampler=run.sampler, search=run.search)
        total, parts = run.reward_mix(prompts, [c.text for c in comps], **fields)
        batch = collate(comps, tokenizer.pad_token_id, accelerator.device)
        scores = torch.tensor(total, device=accelerator.device)
        targets = make_targets(policy, run.reference, value_model, batch, scores, cfg, beta, micro)
        for _ in range(epochs):
            stats = ppo_epoch(policy, value_model, batch, targets, cfg, accelerator,
                              (run.optimizer, value_optimizer), micro, ptx)
        run.scheduler.step()
        if run.sampler is not None:
            run.sampler.load_weights(accelerator.unwrap_model(policy))
        lengths = batch["completion_mask"].sum(-1)
        metrics = {"train/loss": stats["pg_loss"] + cfg.vf_coef * stats["vf_loss"],
                   **{f"train/{k}": v for k, v in stats.items() if k != "ptx_loss" or ptx is not None},
                   **run.reward_mix.log_metrics(total, parts), "train/kl": float(targets["kl"].mean()),
                   "train/completion_len": float(lengths.mean()), "train/lr": run.scheduler.get_last_lr()[0]}
        metrics = mean_over_ranks(accelerator, metrics)  # each rank sampled its own prompts
        kl = metrics["train/kl"]
        tokens += metrics["train/completion_len"] * len(comps) * accelerator.num_processes
        metrics["train/beta"] = beta  # the beta this step's rewards used; every rank adapts it alike
        if cfg.adaptive_kl_target is not None:
            beta = losses.adaptive_kl_beta(beta, kl, cfg.adaptive_kl_target, len(comps) * accelerator.num_processes)
        if run.monitor is not None:
            proxy = parts["rm"] if "rm" in parts else total
            metrics.update(run.monitor.update(step, proxy, gold_rewards(parts, prompts, comps, fields), kl,
                                              float(lengths.mean())))
        ctx.tracker.log(metrics, step=step, total=cfg.max_steps)
        last = metrics
        if run.monitor is not None and run.monitor.should_stop:
            ctx.log(f"stopped at step {step}: reward hacking (rl.stop_on_hacking)")
            break
        checkpoint_loop(run, step, cursor, beta=beta, tokens=tokens, ptx=ptx.rng.getstate() if ptx else None)
    last.update({"train/wall_s": time.time() - ctx.tracker.start, "train/steps": step, "train/tokens": tokens})
    return last
