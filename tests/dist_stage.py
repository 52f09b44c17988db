"""A tiny training stage for the scale-out tests: the loop shape of pretraining, no data pipeline.

Each optimizer step draws one global batch of `micro_batch_size x num_processes` rows of random tokens
(seeded by the step, so every process count sees the same rows); each rank trains on its slice
(pipeline.distributed.rank_slice). The pipeline.distributed helpers make it engine-agnostic, so the
same function runs in-process, under DDP and under DeepSpeed ZeRO. It reads recipe.pretrain
(max_steps, micro_batch_size, optim.lr, optim.grad_clip, checkpoint_every) and recipe.model sizes.
FAKE_CRASH_AT=<step> makes it raise after that step's checkpoint (for the resume test).
"""
from __future__ import annotations

import os

VOCAB = 97


def _model(recipe):
    from transformers import LlamaConfig, LlamaForCausalLM
    m = recipe.model
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=m.n_embd, intermediate_size=2 * m.n_embd,
                      num_hidden_layers=m.n_layer, num_attention_heads=m.n_head, num_key_value_heads=m.n_head,
                      max_position_embeddings=m.seq_len, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def train(recipe, inputs, ctx):
    import torch
    from accelerate import Accelerator

    from pipeline.distributed import configure_engine, load_state, rank_slice, save_model_gathered, save_state

    cfg = recipe.pretrain
    accelerator = Accelerator()
    model = _model(recipe)  # same init on every rank: call_stage seeded every process alike
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=0.0)
    configure_engine(accelerator, micro_batch_size=cfg.micro_batch_size, grad_clip=cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)

    ckpt = ctx.out_dir / "checkpoints" / "last"
    counters = load_state(accelerator, ckpt) or {"step": 0, "losses": []}
    if counters["step"]:
        ctx.log(f"resumed at step {counters['step']}")
    global_rows = cfg.micro_batch_size * accelerator.num_processes
    for step in range(counters["step"], cfg.max_steps):
        gen = torch.Generator().manual_seed(recipe.seed * 1000 + step)
        batch = torch.randint(0, VOCAB, (global_rows, recipe.model.seq_len), generator=gen)  # (G, T)
        rows = batch[rank_slice(global_rows, accelerator)].to(accelerator.device)  # (b, T)
        loss = model(input_ids=rows, labels=rows).loss
        accelerator.backward(loss)
        if cfg.optim.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()  # equal rows per rank
        counters["losses"].append(mean_loss)
        counters["step"] = step + 1
        ctx.tracker.log({"train/loss": mean_loss}, step=step + 1, total=cfg.max_steps)
        if (step + 1) % cfg.checkpoint_every == 0:
            save_state(accelerator, ckpt, counters)
        if os.environ.get("FAKE_CRASH_AT") == str(step + 1):
            raise RuntimeError(f"crash requested after step {step + 1}")

    save_model_gathered(accelerator, model, None, ctx.out_dir)
    metrics = {f"loss/{i + 1}": v for i, v in enumerate(counters["losses"])}
    return metrics | {"world_size": float(accelerator.num_processes),
                      "distributed_type": str(accelerator.distributed_type)}
