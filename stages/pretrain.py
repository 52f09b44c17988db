"""Pretrain stage: next-token prediction on token shards, our own loop on accelerate (nanoGPT style).

    lifecycle run recipes/tiny.yaml --stages pretrain
    accelerate launch --multi_gpu --num_processes 8 -m pipeline.worker ...   (what `lifecycle run` does for N > 1)

Top to bottom: model (fresh from recipe.model, or `pretrain.from`) -> shards (built once, cached in
runs/<name>/shards) -> AdamW + schedule -> resume from the last checkpoint -> steps of `accum`
micro-batches (grad sync on the last only), clip, step; periodic val loss / bits-per-byte, samples,
checkpoints -> save_pretrained + tokenizer, metrics with the byte-bigram baseline.

The global batch of a step is fixed by the data (stages/data/shards.py): rank r's micro-batch m holds
windows (m*world + r)*b ... +b of the step, so N processes x micro-batch b compute what one process
x N*b does. Departures from GPT-2/nanoGPT: llama-style model by default; no document masking (BOS
separates documents); MFU counts 6N + 12*L*d*T flops per token (PaLM appendix B).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import AutoTokenizer

from pipeline.distributed import configure_engine, holds_shards
from pipeline.errors import UserError
from stages.data.shards import ShardSet, TrainWindows, build_shards, byte_pair_counts, token_byte_lengths
from stages.eval.bpb import nll_sums
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.checkpoints import Checkpoints
from stages.lm.flops import flops_per_token, peak_flops
from stages.lm.losses import bigram_bits_per_byte, bits_per_byte
from stages.lm.model import build_model, count_parameters, load_causal_lm, save_model
from stages.lm.optim import make_optimizer, make_scheduler


# ---------------------------------------------------------------- setup
def _accelerator(cfg):
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and torch.cuda.is_available())
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


def _model_and_tokenizer(recipe, inputs):
    if recipe.pretrain.from_:
        model, tokenizer = load_causal_lm(inputs["model"])
        ensure_chat_tokens(tokenizer)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if limit and recipe.model.seq_len > limit:
            raise UserError(f"model.seq_len: {recipe.model.seq_len} exceeds {inputs['model']}'s context {limit}")
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(inputs["tokenizer"])
    return build_model(recipe.model, tokenizer), tokenizer


def accum_steps(cfg, seq_len: int, world: int) -> int:
    """Micro-steps per optimizer step so that one step sees total_batch_tokens."""
    per_micro = cfg.micro_batch_size * seq_len * world
    if cfg.total_batch_tokens is None:
        return 1
    if cfg.total_batch_tokens % per_micro:
        raise UserError(f"pretrain.total_batch_tokens: {cfg.total_batch_tokens} is not a multiple of micro_batch_size "
                        f"x seq_len x processes = {cfg.micro_batch_size} x {seq_len} x {world} = {per_micro}")
    return cfg.total_batch_tokens // per_micro


# ---------------------------------------------------------------- evaluation
def _evaluate(model, accelerator, val_tokens, seq_len, batch_size, byte_lengths) -> dict[str, float]:
    model.eval()
    sums = nll_sums(model, val_tokens, seq_len, batch_size, byte_lengths,
                    accelerator.process_index, accelerator.num_processes)
    sums = accelerator.reduce(sums, "sum")
    model.train()
    return {"eval/val_loss": float(sums[0] / sums[1]), "eval/val_bpb": bits_per_byte(float(sums[2]), int(sums[3]))}


@torch.no_grad()
def _samples(model, tokenizer, prompts: list[list[int]], step: int, max_new_tokens: int = 64) -> list[list]:
    """Sampled continuations (T=0.8, top-k 50) under a fixed seed, outside the training RNG stream."""
    rows = []
    model.eval()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(step)
        for prompt in prompts:
            ids = torch.tensor([prompt], device=next(model.parameters()).device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=True, temperature=0.8, top_k=50, pad_token_id=tokenizer.pad_token_id)
            rows.append([step, tokenizer.decode(prompt, skip_special_tokens=True),
                         tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)])
    model.train()
    return rows


def _sample_prompts(val_tokens: np.ndarray, bos: int, n: int, length: int = 12) -> list[list[int]]:
    """The first `length` tokens of the first n validation documents (BOS included)."""
    starts = np.flatnonzero(val_tokens == bos)[:n]
    return [val_tokens[s: s + length].tolist() for s in starts]


# ---------------------------------------------------------------- the loop
def _train_step(model, optimizer, scheduler, accelerator, windows, step: int, accum: int, cfg) -> tuple[float, float]:
    """One optimizer step of `accum` micro-batches; returns (mean loss over ranks, grad norm or nan)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    loss_sum = torch.zeros((), device=accelerator.device)
    accelerator.gradient_accumulation_steps = accum  # [scale-out] backward divides by it (set before prepare in run too)
    for micro in range(accum):
        x, y = windows.micro_batch(step, micro, rank, world, cfg.micro_batch_size, accum)  # (B, T) each
        x, y = torch.from_numpy(x).to(accelerator.device), torch.from_numpy(y).to(accelerator.device)
        # accumulate(): grads sync (DDP all-reduce / DeepSpeed step boundary) on the last micro-step only,
        # and backward divides by accum (DeepSpeed: by its gradient_accumulation_steps) [scale-out]
        with accelerator.accumulate(model):
            logits = model(input_ids=x).logits                                             # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            accelerator.backward(loss)
        loss_sum += loss.detach()
    grad_norm = float("nan")
    if cfg.optim.grad_clip > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)  # DeepSpeed clips in backward
        grad_norm = float(norm) if norm is not None else float("nan")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(loss_sum / accum, "mean")), grad_norm


def _lr_used(scheduler) -> float:
    """The lr of the step just taken (the scheduler has already moved on to the next one)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)


def run(recipe, inputs, ctx) -> dict[str, float]:
    cfg, seq_len = recipe.pretrain, recipe.model.seq_len
    accelerator = _accelerator(cfg)
    model, tokenizer = _model_and_tokenizer(recipe, inputs)
    with accelerator.main_process_first():  # rank 0 tokenizes; the others then find the finished shards
        shard_dir = build_shards(recipe.data, recipe.seed, tokenizer, ctx.run_dir / "shards", log=ctx.log,
                                 progress_bar=accelerator.is_main_process)
    shards = ShardSet(shard_dir)
    world = accelerator.num_processes
    accum = accum_steps(cfg, seq_len, world)
    windows = TrainWindows(shards, seq_len, recipe.seed)
    val_tokens = shards.head("val", cfg.eval_tokens + 1)
    byte_lengths = torch.as_tensor(token_byte_lengths(tokenizer))
    prompts = _sample_prompts(val_tokens, tokenizer.bos_token_id, recipe.eval.samples)
    n_params = count_parameters(model)
    step_tokens = accum * world * cfg.micro_batch_size * seq_len
    flops_tok = flops_per_token(model, seq_len)
    peak, peak_name = peak_flops(accelerator.device.type, accelerator.mixed_precision == "bf16")
    ctx.log(f"{n_params / 1e6:.2f}M params | {world} process(es) x micro-batch {cfg.micro_batch_size} x {accum} "
            f"accum x {seq_len} tokens = {step_tokens:,} tokens/step | {cfg.max_steps} steps = "
            f"{cfg.max_steps * step_tokens / shards.manifest['splits']['train']['tokens']:.2f} epochs | "
            f"mixed precision {accelerator.mixed_precision} | MFU vs {peak_name}")

    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    accelerator.gradient_accumulation_steps = accum  # [scale-out] what accumulate() and DeepSpeed count
    configure_engine(accelerator, cfg.micro_batch_size, cfg.optim.grad_clip)  # DeepSpeed's "auto" batch/clip
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if cfg.compile:
        model = torch.compile(model)
    ckpt = Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every)
    start = ckpt.resume(ctx)

    model.train()
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        loss, grad_norm = _train_step(model, optimizer, scheduler, accelerator, windows, step, accum, cfg)
        dt = time.perf_counter() - t0
        done = step + 1
        metrics = {"train/loss": loss, "train/lr": _lr_used(scheduler)}
        if math.isfinite(grad_norm):
            metrics["train/grad_norm"] = grad_norm
        metrics["train/tokens_per_s"] = step_tokens / dt
        metrics["train/mfu"] = flops_tok * step_tokens / dt / (peak * world)
        if done % cfg.eval_every == 0 and done < cfg.max_steps:
            metrics.update(_evaluate(model, accelerator, val_tokens, seq_len, cfg.micro_batch_size, byte_lengths))
        ctx.tracker.log(metrics, step=done, total=cfg.max_steps)
        if prompts and (done % cfg.sample_every == 0 or done == cfg.max_steps):
            rows = _samples(accelerator.unwrap_model(model, keep_torch_compile=False), tokenizer, prompts, done)
            ctx.tracker.table("samples", ["step", "prompt", "completion"], rows)
            for _, prompt, completion in rows:
                ctx.log(f"sample @ {done}: {prompt!r} -> {completion!r}")
        ckpt.save_if_due(done, cfg.max_steps, ctx)

    metrics = _final_metrics(_evaluate(model, accelerator, val_tokens, seq_len, cfg.micro_batch_size, byte_lengths),
                             shards, val_tokens, tokenizer)
    metrics.update({"train/tokens": float(cfg.max_steps * step_tokens), "params": float(n_params)})
    ctx.tracker.log(metrics, step=cfg.max_steps)
    ctx.log(f"val {metrics['eval/val_bpb']:.3f} bits/byte vs byte bigram {metrics['baseline/bigram_bpb']:.3f} "
            f"({100 * (1 - metrics['eval/bpb_ratio_vs_bigram']):.1f}% below)")
    _save_final(accelerator, model, tokenizer, ctx.out_dir, save_model)
    ckpt.finish(cfg.keep_checkpoints)
    return metrics


def _final_metrics(final: dict, shards: ShardSet, val_tokens: np.ndarray, tokenizer) -> dict[str, float]:
    """Add the byte bigram, fit on the training text and scored on exactly the val text the model was scored on."""
    segments = np.split(val_tokens, np.flatnonzero(val_tokens == tokenizer.bos_token_id))
    val_docs = [tokenizer.decode(seg, skip_special_tokens=True) for seg in segments if len(seg) > 1]
    bigram = bigram_bits_per_byte(torch.from_numpy(shards.byte_pairs("train")),
                                  torch.from_numpy(byte_pair_counts(val_docs)))
    return {**final, "baseline/bigram_bpb": bigram, "eval/bpb_ratio_vs_bigram": final["eval/val_bpb"] / bigram}


def _save_final(accelerator, model, tokenizer, out_dir: Path, save_model) -> None:
    """save_pretrained + tokenizer on rank 0; sharded engines (FSDP, ZeRO-3) gather the weights first."""
    accelerator.wait_for_everyone()
    sharded = holds_shards(accelerator)  # [scale-out] FSDP, ZeRO-3 (ZeRO-2's gathered dict would untie embeddings)
    state = accelerator.get_state_dict(model) if sharded else None
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if accelerator.is_main_process:
        if state is None:
            save_model(unwrapped, tokenizer, out_dir)
        else:
            unwrapped.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
    accelerator.wait_for_everyone()
