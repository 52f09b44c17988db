"""Supervised fine-tuning pieces shared by the sft stage and RL's equal-compute control: the start model,
LoRA, the seeded step schedule, batches, and one optimizer step whose loss is the mean over the global
batch's trained tokens (so N processes x micro-batch b compute what 1 process x N*b does).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from pipeline.errors import UserError
from stages.data.chat import IGNORE
from stages.lm.bpe import ensure_chat_tokens
from stages.lm.model import load_causal_lm


class StepSchedule:
    """Which rows form global step s: a fresh seeded shuffle every epoch, read in order."""

    def __init__(self, n_rows: int, per_step: int, seed: int):
        self.n, self.per_step, self.seed, self._orders = n_rows, per_step, seed, {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.n))
            random.Random(f"{self.seed}:sft:{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def rows(self, step: int) -> list[int]:
        start = step * self.per_step
        return [self._order(i // self.n)[i % self.n] for i in range(start, start + self.per_step)]


def collate(rows: list[tuple], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded tensors; packed rows carry position_ids and no attention mask."""
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)      # (B, T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)   # (B, T)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row[0])], labels[i, :len(row[1])], attn[i, :len(row[0])] = (
            torch.tensor(row[0]), torch.tensor(row[1]), 1)
    batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
    if rows[0][2] is not None:
        batch["position_ids"] = torch.tensor([r[2] for r in rows], dtype=torch.long, device=device)
    else:
        batch["attention_mask"] = attn.to(device)
    return batch


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over trained tokens. logits (B, T, V), labels (B, T)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE, reduction="sum")


def add_lora(model, cfg, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """peft LoRA adapters (cfg.lora_r, cfg.lora_alpha) on every linear layer; only they train, plus
    `modules_to_save` (a reward model's new score head: ["score"])."""
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                        task_type=task_type, modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def merge_lora(model):
    """A peft model -> the plain transformers model with the adapters folded into its weights."""
    return model.merge_and_unload()


def load_start_model(path: str, what: str = "sft.from / inputs.model"):
    """An HF causal LM and its tokenizer, with this project's chat tokens (added when missing)."""
    try:
        model, tokenizer = load_causal_lm(path)
    except OSError as exc:
        raise UserError(f"{what}: cannot load '{path}' as an HF causal LM ({exc})") from None
    ensure_chat_tokens(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # (ZeRO-3 loads weights partitioned)
        model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    return model, tokenizer


# ---------------------------------------------------------------- loop
def train_step(model, optimizer, scheduler, accelerator, rows: list[tuple], cfg, pad_id: int) -> tuple[float, int]:
    """One optimizer step over the global batch `rows`; returns (mean loss per trained token, tokens)."""
    world, rank, b = accelerator.num_processes, accelerator.process_index, cfg.micro_batch_size
    n_trained = sum(sum(1 for label in r[1][1:] if label != IGNORE) for r in rows)  # global, same on all ranks
    local = torch.zeros((), device=accelerator.device)
    accelerator.gradient_accumulation_steps = cfg.grad_accum  # [scale-out] backward divides by it (set early in run too)
    for micro in range(cfg.grad_accum):
        chunk = rows[micro * b * world:(micro + 1) * b * world][rank * b:(rank + 1) * b]
        batch = collate(chunk, pad_id, accelerator.device)
        labels = batch.pop("labels")
        # accumulate(): sync on the last micro-step only (DDP all-reduce / DeepSpeed step boundary) [scale-out]
        with accelerator.accumulate(model):
            loss_sum = token_loss_sum(model(**batch, use_cache=False).logits, labels)
            # DDP/FSDP/ZeRO average gradients over ranks: x world turns that into the global token mean;
            # x grad_accum undoes the division by the accumulation steps in backward (or DeepSpeed's)
            accelerator.backward(loss_sum * world * cfg.grad_accum / max(n_trained, 1))
        local += loss_sum.detach()
    if cfg.optim.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    total = accelerator.reduce(local, "sum")
    return float(total) / max(n_trained, 1), sum(len(r[0]) for r in rows)
