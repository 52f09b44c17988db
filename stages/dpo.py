"""The `dpo` stage: Direct Preference Optimization (Rafailov et al. 2023) from the SFT policy's own ranked
rollouts and chosen/rejected datasets; no reward model, no sampling during training.

    lifecycle run recipes/tiny.yaml --stages dpo                  (inputs["model"]: the sft dir or dpo.from)
    lifecycle run recipes/tiny.yaml --stages dpo dpo.loss=plackett_luce dpo.lora=true

Reads only recipe.seed, recipe.dpo and recipe.eval. Top to bottom:
1. preferences (stages/preference/data.py): K rollouts per prompt from the start policy (`dpo.num_prompts`,
   `k`, `temperature`, ...) ranked by `dpo.rankers` (verifier tiers by default), plus `dpo.pairs_datasets`
   as K=2; prompts split into train / held out by a hash of the prompt text (as the rm stage);
2. the reference: the start model's summed completion log-probs, computed ONCE for every completion
   (train and held out) before training, instead of a frozen second model in memory: DPO's reference
   term is a constant per completion, so precomputing it costs one forward pass per completion in all;
3. the start model's held-out verified accuracy per family (base/...), greedy, eval.max_prompts_per_family;
4. training: per step `prompts_per_batch` prompts with all K completions in one forward pass,
   loss `dpo.loss`: "pairs" (eq. 7 on every ranked pair) or "plackett_luce" (eq. 18, the K-way ranking
   likelihood of the paper's appendix A.3), stages/lm/losses.py dpo_loss; + `sft_coef` x NLL of each
   prompt's best completions when set (RPO, Pang et al. 2024). Optional LoRA, merged at the end.
   Checkpoints every `checkpoint_every` steps (stages/lm/checkpoints.py); a rerun after a kill resumes;
5. eval: held-out preference accuracy of the implicit reward beta * log(pi / pi_ref) against the rankings
   and against the verifier's gold tiers (stages/rm/metrics.py, as the rm stage reports its RM), the
   verified accuracy per family (eval/...), and gain/acc/<family>.

Why our loss and loop, not TRL's DPOTrainer (1.16): it takes chosen/rejected pairs only (no K-way
Plackett-Luce); it re-tokenizes completions with the chat template and trains on every completion token,
while ours must leave calculator output (<|result|>...<|/result|>, written by the tool) out of the
log-probs, as SFT and RL do; and our checkpoints resume every stage the same way. The loss is 40 lines
of tensor maths, tested against hand-computed values (tests/test_dpo.py).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from pipeline.distributed import configure_engine, rank_slice, save_model_gathered, whole_model_loading
from pipeline.errors import UserError
from reward.ranking import ranking_pairs
from stages.data.tasks import FAMILIES
from stages.eval.families import evaluate_families
from stages.lm.checkpoints import Checkpoints
from stages.lm.finetune import add_lora, load_start_model, merge_lora
from stages.lm.losses import dpo_loss
from stages.lm.model import load_causal_lm, mask_padded_vocab, save_model
from stages.lm.optim import make_optimizer, make_scheduler
from stages.policy_gradient.evaluate import gains
from stages.preference.data import collate, completion_logps, encode, example_logps, gather_preferences, to_grid
from stages.rm.data import global_batches, is_test, split_key
from stages.rm.metrics import ranking_metrics
from stages.tools.search import copy_search_index


def preference_step(model, batch: dict, ref_grid: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over every completion of the batch; (loss, pair accuracy of the implicit reward)."""
    logps = completion_logps(model, batch)                                              # (N,)
    grid = to_grid(logps, batch)                                                        # (B, K)
    loss, acc = dpo_loss(grid, ref_grid, batch["ranks"], cfg.beta, cfg.loss)
    if cfg.sft_coef > 0:  # RPO: keep the best completions likely, not only more likely than the rest
        tokens = to_grid(batch["completion_mask"].sum(-1), batch)                       # (B, K)
        best = (batch["ranks"] == 0).float()
        loss = loss - cfg.sft_coef * (grid * best).sum() / (tokens * best).sum().clamp(min=1.0)
    return loss, acc


def train(model, tokenizer, train_ex, ref_logps, cfg, ctx, accelerator, ckpt, carry: dict) -> tuple:
    """The DPO loop; returns (prepared model, last loss, trained completion tokens, steps)."""
    world = accelerator.num_processes
    batches = global_batches(len(train_ex), cfg.prompts_per_batch * world, cfg.epochs, ctx.seed)
    if not batches:
        raise UserError(f"dpo: {len(train_ex)} training prompts make no step of {cfg.prompts_per_batch} x "
                         f"{world} prompts; lower dpo.prompts_per_batch or add prompts")
    if cfg.lora:
        model = add_lora(model, cfg)
    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    scheduler = make_scheduler(optimizer, cfg.optim, len(batches))
    configure_engine(accelerator, micro_batch_size=cfg.prompts_per_batch, grad_clip=cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    start = ckpt.resume(ctx)
    loss_value = carry.get("loss", float("nan"))
    model.train()
    for step in range(start + 1, len(batches) + 1):
        idx = batches[step - 1][rank_slice(len(batches[step - 1]), accelerator, "dpo step")]
        mine = [train_ex[i] for i in idx]
        batch = collate(mine, tokenizer.pad_token_id, accelerator.device)
        ref = to_grid(torch.cat([ref_logps[i] for i in idx]).to(accelerator.device), batch)
        lr = scheduler.get_last_lr()[0]
        loss, acc = preference_step(model, batch, ref, cfg)
        accelerator.backward(loss)
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(loss.detach(), "mean").item()  # equal prompts per rank
        ctx.tracker.log({"train/loss": loss_value, "train/pair_acc": accelerator.reduce(acc, "mean").item(),
                         "train/lr": lr}, step=step, total=len(batches))
        ckpt.save_if_due(step, len(batches), ctx, {**carry, "loss": loss_value})
    tokens = sum(sum(m) for batch in batches for i in batch for m in train_ex[i].masks)
    return model, loss_value, float(tokens), len(batches)


def evaluate(model, tokenizer, recipe, ctx, prefix: str) -> dict[str, float]:
    """Held-out verified accuracy per family: greedy, eval.max_prompts_per_family test-split prompts each."""
    ev = recipe.eval
    out = evaluate_families(model, tokenizer, list(FAMILIES), ev.max_prompts_per_family, recipe.seed,
                            ev.max_new_tokens, use_tools=True, temperature=0.0, prefix=prefix)
    ctx.log(f"{prefix}: " + ", ".join(f"{k.split('/')[-1]} {v:.1%}" for k, v in out.items()
                                      if k.startswith(f"{prefix}/acc/")))
    return out


def preference_eval(model, tokenizer, test_ex, ref_logps, cfg, device) -> dict[str, float]:
    """Held-out pairwise / top-1 accuracy of the implicit reward against the rankings and gold tiers."""
    if not test_ex:
        return {}
    logps = example_logps(model, test_ex, tokenizer.pad_token_id, device, cfg.prompts_per_batch)
    rewards = [cfg.beta * (p - r) for p, r in zip(logps, ref_logps)]
    return ranking_metrics(test_ex, rewards)


def run(recipe, inputs, ctx) -> dict[str, float]:
    cfg = recipe.dpo
    accelerator = Accelerator(mixed_precision=recipe.distributed_for("dpo").mixed_precision)
    main = accelerator.is_main_process
    ckpt = Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every)
    saved = ckpt.loop_state()  # on a resume: the reference log-probs and the start model's eval
    ranked = gather_preferences(cfg, recipe.seed, inputs["model"], ctx, accelerator)

    model, tokenizer = load_start_model(inputs["model"], what="dpo.from / inputs.model")
    mask_padded_vocab(model, len(tokenizer))  # log-probs over the tokens the sampler can draw
    model.to(accelerator.device)
    held_out = [is_test(split_key(r), cfg.test_fraction) for r in ranked]
    train_ex = encode([r for r, t in zip(ranked, held_out) if not t], tokenizer, cfg.max_length)
    test_ex = encode([r for r, t in zip(ranked, held_out) if t], tokenizer, cfg.max_length)
    ctx.log(f"{len(train_ex)} train prompts / {sum(len(ranking_pairs(e.ranks)) for e in train_ex)} ranked pairs, "
            f"{len(test_ex)} held out | loss {cfg.loss}, beta {cfg.beta}")
    ref = saved.get("ref") or {
        "train": example_logps(model, train_ex, tokenizer.pad_token_id, accelerator.device, cfg.prompts_per_batch),
        "test": example_logps(model, test_ex, tokenizer.pad_token_id, accelerator.device, cfg.prompts_per_batch)}
    base = saved.get("base")
    if base is None:
        base = evaluate(model, tokenizer, recipe, ctx, "base") if cfg.eval_base and main else {}
    accelerator.wait_for_everyone()

    model, final_loss, tokens, steps = train(model, tokenizer, train_ex, ref["train"], cfg, ctx, accelerator, ckpt,
                                      {"ref": ref, "base": base})
    metrics: dict[str, float] = {**base, "train/loss": final_loss, "train/tokens": tokens,
                                 "train/prompts": float(len(train_ex))}
    _save(accelerator, model, tokenizer, cfg, ctx.out_dir)
    del model
    if main:
        system_prompt = Path(inputs["model"]) / "system_prompt.txt"  # what `lifecycle chat` uses with this model
        if system_prompt.is_file():
            shutil.copy(system_prompt, ctx.out_dir / "system_prompt.txt")
        copy_search_index(inputs["model"], ctx.out_dir)   # and the search index chat and serve load with it
        with whole_model_loading(accelerator):  # evaluate what was saved: the artifact the next stage gets
            model, _ = load_causal_lm(ctx.out_dir, device=str(accelerator.device))
        mask_padded_vocab(model, len(tokenizer))
        metrics.update(preference_eval(model, tokenizer, test_ex, ref["test"], cfg, accelerator.device))
        metrics.update(evaluate(model, tokenizer, recipe, ctx, "eval"))
        metrics.update(gains(metrics, "base/", "eval/", "gain"))
        ctx.log("dpo: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                    if k.startswith(("gain/acc/", "eval/gold_pairwise_acc")) and math.isfinite(v)))
        ctx.tracker.log(metrics, step=steps)
    ckpt.finish(cfg.keep_checkpoints)
    return metrics


def _save(accelerator, model, tokenizer, cfg, out_dir: Path) -> None:
    """A plain HF dir: LoRA adapters folded into the weights, or the (gathered) full model."""
    if cfg.lora:
        merged = merge_lora(accelerator.unwrap_model(model))
        if accelerator.is_main_process:
            save_model(merged, tokenizer, out_dir)
        accelerator.wait_for_everyone()
    else:
        save_model_gathered(accelerator, model, tokenizer, out_dir)
