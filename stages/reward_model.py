"""The `rm` stage: a reward model trained on K-way rankings of rollouts, as in InstructGPT (Ouyang et al. 2022).

    lifecycle run recipes/tiny.yaml --stages rm        # = make rm (rollouts first, resumable)

Steps: (1) K rollouts per prompt from the SFT policy (stages/rm/rollouts.py) into runs/<name>/rollouts.jsonl;
(2) rankings from the sources `rm.rankers` mixes (verifier, judge, human; reward/ranking.py), plus any
chosen/rejected datasets as K=2; (3) AutoModelForSequenceClassification(num_labels=1) initialised from
the SFT checkpoint with its tokenizer; (4) per prompt, all C(K,2) ranked pairs in one batch element:
loss = -mean log sigmoid(r_w - r_l), with ONE forward pass per completion (K per prompt, every pair's
margin taken from those K scalars); (5) centring: the mean reward of reference answers is stored as
config.reward_offset and subtracted by reward/model_scorer.py; (6) held-out pairwise and top-1 accuracy
per family, agreement with the verifier's gold ranking (with a 95% interval over prompts), a reward
histogram (reward_hist.png), and the RM judged by use: best-of-K picked by the RM against one random sample
and an oracle (stages/rm/best_of_k.py, eval/bok/...).

Option `rm.process_coef` adds a per-token loss (process supervision, Lightman et al. 2023): the same
score head, read at every completion token, learns whether the completion is still on a path to a right
answer there (`process_labels`). The RM still reads the last token; the extra targets teach it where
answers go wrong, which one bit per ranked pair barely does.

Departures: InstructGPT centred on labeler demonstrations; we use the tasks' reference answers (else the
best-ranked completions). HF's score head has no bias, so the shift lives in config.json, not the weights.
Ties (equal ranks) give no pair. Our own loop on accelerate, as TRL's RewardTrainer takes pairs only.

Resume: a checkpoint every `rm.checkpoint_every` steps (stages/lm/checkpoints.py); the rollouts file
resumes on its own. LoRA (`rm.lora`): adapters on every linear layer plus the new score head trained
whole (peft modules_to_save), merged into a plain sequence-classification dir at the end.
"""
from __future__ import annotations

import math
import random

import torch
from accelerate import Accelerator

from pipeline.distributed import configure_engine, rank_slice, save_model_gathered, whole_model_loading
from pipeline.errors import UserError
from reward.ranking import Ranked, collect_rankings, load_pairs, ranking_pairs
from stages.lm.checkpoints import Checkpoints
from stages.lm.finetune import add_lora, merge_lora
from stages.lm.losses import kway_ranking_loss, process_loss
from stages.lm.model import save_model
from stages.lm.optim import make_optimizer, make_scheduler
from stages.rm.best_of_k import best_of_k_metrics, describe
from stages.rm.data import Example, collate, encode, global_batches, is_test, load_reward_model, split_key
from stages.rm.metrics import plot_histogram, ranking_metrics, score_examples
from stages.rm.rollouts import read_rollouts, rollouts_for_recipe, tokenizer_hash


def ranking_loss_step(model, batch: dict, process_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over every completion of the batch, then the K-way loss on the (B, K) grid
    (+ process_coef x the per-token process loss, from the same forward)."""
    token_scores = {}
    hook = None
    if process_coef > 0 and "token_labels" in batch:
        # HF's head scores every position and then reads the last non-pad one: keep the whole (N, T, 1)
        head = getattr(model, "module", model).score   # under DDP / DeepSpeed / FSDP the wrapper has .module
        hook = head.register_forward_hook(lambda _m, _a, out: token_scores.__setitem__("all", out))
    try:
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]  # (N,)
    finally:
        if hook is not None:
            hook.remove()
    b, k = batch["ranks"].shape
    grid = rewards.new_zeros(b * k).scatter(0, batch["slots"], rewards).view(b, k)                   # (B, K)
    loss, acc = kway_ranking_loss(grid, batch["ranks"])
    if token_scores:
        loss = loss + process_coef * process_loss(token_scores["all"][..., 0], batch["token_labels"])
    return loss, acc


def train(model, examples: list[Example], cfg, ctx, accelerator, pad_id: int) -> tuple:
    """The RM loop (checkpointed every rm.checkpoint_every steps); returns (prepared model, last loss, tokens)."""
    examples = [e for e in examples if ranking_pairs(e.ranks)]  # all-tied prompts carry no signal
    if not examples:
        raise UserError("rm: no training prompt has two differently ranked completions (all ties); "
                        "more prompts, a higher rm.temperature, or rm.tie_break: shorter")
    world = accelerator.num_processes
    batches = global_batches(len(examples), cfg.prompts_per_batch * world, cfg.epochs, ctx.seed)
    if not batches:
        raise UserError(f"rm: {len(examples)} training prompts make no step of {cfg.prompts_per_batch} prompts x "
                        f"{world} processes; lower rm.prompts_per_batch or add prompts")
    if cfg.lora:  # the score head is new: it trains whole beside the adapters
        model = add_lora(model, cfg, task_type="SEQ_CLS", modules_to_save=["score"])
    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    configure_engine(accelerator, micro_batch_size=cfg.prompts_per_batch, grad_clip=cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)
    total = len(batches)
    scheduler = make_scheduler(optimizer, cfg.optim, total)  # stepped by us once per step (not prepared)
    accelerator.register_for_checkpointing(scheduler)
    ckpt = Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every)
    start = ckpt.resume(ctx)
    every = max(1, total // 100)
    loss_value = ckpt.loop_state().get("loss", float("nan"))
    model.train()
    for step in range(start + 1, total + 1):
        batch = batches[step - 1]
        mine = [examples[i] for i in batch[rank_slice(len(batch), accelerator, "rm step")]]
        loss, acc = ranking_loss_step(model, {k: v.to(accelerator.device) for k, v in collate(mine, pad_id).items()},
                                      cfg.process_coef)
        accelerator.backward(loss)
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(loss.detach(), "mean").item()  # equal prompts per rank
        if step % every == 0 or step == total:
            ctx.tracker.log({"train/loss": loss_value, "train/pair_acc": accelerator.reduce(acc, "mean").item(),
                             "train/lr": scheduler.get_last_lr()[0]}, step=step, total=total)
        ckpt.save_if_due(step, total, ctx, {"loss": loss_value})
    tokens = sum(len(s) for batch in batches for i in batch for s in examples[i].seqs)
    return model, loss_value, float(tokens)


# ---------------------------------------------------------------- the stage
def gather_rankings(recipe, model_dir: str, ctx, accelerator) -> list[Ranked]:
    cfg = recipe.rm
    rollouts, path = [], ctx.run_dir / "rollouts.jsonl"
    if {"verifier", "judge"} & set(cfg.rankers):
        if accelerator.is_main_process:
            rollouts = rollouts_for_recipe(recipe, model_dir, path, str(accelerator.device), log=ctx.log)
        accelerator.wait_for_everyone()
        rollouts = rollouts or read_rollouts(path)[:cfg.num_prompts]
    elif path.is_file():
        rollouts = read_rollouts(path)  # lets human rankings recover families and answers
    ranked = collect_rankings(cfg, rollouts, str(accelerator.device), log=ctx.log)
    for spec in cfg.pairs_datasets:
        part = load_pairs(spec, cfg.pairs_max_examples)
        ctx.log(f"rankings: {len(part)} chosen/rejected pairs from {spec}")
        ranked += part
    if not ranked:
        raise UserError("rm.rankers / rm.pairs_datasets: no ranked prompts to train on")
    return ranked


def run(recipe, inputs: dict[str, str], ctx) -> dict[str, float]:
    cfg = recipe.rm
    # A plain Accelerator: under `accelerate launch` the launcher's environment picks the engine (DDP,
    # FSDP, ZeRO); in one process it runs on the GPU when there is one.
    accelerator = Accelerator(mixed_precision=recipe.distributed_for("rm").mixed_precision)
    ranked = gather_rankings(recipe, inputs["model"], ctx, accelerator)

    model, tokenizer = load_reward_model(inputs["model"], accelerator.device)
    ours = tokenizer_hash(tokenizer)
    if ctx.run_dir and (ctx.run_dir / "rollouts.jsonl").is_file():
        other = {r.get("tokenizer") for r in read_rollouts(ctx.run_dir / "rollouts.jsonl")} - {None, ours}
        if other and {"verifier", "judge"} & set(cfg.rankers):
            raise UserError(f"rm: rollouts.jsonl was sampled with another tokenizer ({other.pop()}) than the RM's "
                            f"({ours}); the RM must share the policy's tokenizer")
    test_mask = [is_test(split_key(r), cfg.test_fraction) for r in ranked]
    train_ranked = [r for r, t in zip(ranked, test_mask) if not t]
    test_ranked = [r for r, t in zip(ranked, test_mask) if t]
    train_ex = encode(train_ranked, tokenizer, cfg.max_length, process=cfg.process_coef > 0)
    test_ex = encode(test_ranked, tokenizer, cfg.max_length)
    ctx.log(f"train {len(train_ex)} prompts / {sum(len(ranking_pairs(e.ranks)) for e in train_ex)} pairs, "
            f"held out {len(test_ex)} prompts")
    model, final_loss, tokens = train(model, train_ex, cfg, ctx, accelerator, tokenizer.pad_token_id)

    # [scale-out] every rank joins the gather (ZeRO-3/FSDP shard the weights); rank 0 then evaluates
    # the saved dir, the artifact PPO will load, and writes the centring offset into its config.
    if cfg.lora:  # a plain sequence classifier: adapters folded in, the trained score head kept
        merged = merge_lora(accelerator.unwrap_model(model))
        if accelerator.is_main_process:
            save_model(merged, tokenizer, ctx.out_dir)
        accelerator.wait_for_everyone()
    else:
        save_model_gathered(accelerator, model, tokenizer, ctx.out_dir)
    del model
    metrics: dict[str, float] = {"train/final_loss": final_loss, "train/tokens": tokens}
    if accelerator.is_main_process:
        with whole_model_loading(accelerator):
            model, _ = load_reward_model(str(ctx.out_dir), accelerator.device)
        metrics.update(centre_and_evaluate(model.eval(), tokenizer, train_ranked, test_ex, cfg, ctx, accelerator.device))
        model.config.save_pretrained(ctx.out_dir)
    Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every).finish(cfg.keep_checkpoints)
    return metrics


def centre_and_evaluate(model, tokenizer, train_ranked: list[Ranked], test_ex: list[Example], cfg, ctx, device):
    """Set config.reward_offset from reference answers, then held-out metrics, histogram and samples."""
    refs = [Ranked(r.prompt_id, r.family, r.prompt_messages, [r.reference], [0], "reference")
            for r in train_ranked if r.reference]
    if not refs:  # no task references (human or pairs data): centre on the best-ranked completions
        refs = [Ranked(r.prompt_id, r.family, r.prompt_messages, [r.completions[r.ranks.index(min(r.ranks))]], [0], "")
                for r in train_ranked]
    refs = random.Random(0).sample(refs, min(len(refs), 512))
    ref_ex = encode(refs, tokenizer, cfg.max_length)
    offset = float(torch.cat(score_examples(model, ref_ex, tokenizer.pad_token_id, device)).mean())
    model.config.reward_offset = offset
    rewards = score_examples(model, test_ex, tokenizer.pad_token_id, device, offset)
    metrics = {"eval/reward_offset": offset, "eval/n_prompts": float(len(test_ex))}
    if test_ex:
        metrics.update(ranking_metrics(test_ex, rewards))
        metrics.update(best_of_k_metrics(test_ex, rewards))  # the RM judged by use: its top pick, vs chance and oracle
        plot_histogram(test_ex, rewards, ctx.out_dir / "reward_hist.png")
        ctx.tracker.images({"eval/reward_hist": ctx.out_dir / "reward_hist.png"})
        rows = [[e.family, tokenizer.decode(e.seqs[i][-80:]), round(float(r[i]), 3), e.ranks[i],
                 e.gold[i] if e.gold else None] for e, r in list(zip(test_ex, rewards))[:10] for i in range(len(e.seqs))]
        ctx.tracker.table("eval/rm_samples", ["family", "completion_tail", "reward", "rank", "gold_tier"], rows)
    ctx.log("eval: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if "/" not in k[5:] and math.isfinite(v)))
    if describe(metrics):
        ctx.log("eval: " + describe(metrics))
    return metrics
