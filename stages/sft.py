"""SFT stage: fine-tune a base model on conversations, loss on the assistant's tokens only.

    lifecycle run recipes/tiny.yaml --stages sft          (inputs["model"]: the pretrain dir or sft.from)
    lifecycle run recipes/tiny.yaml --stages sft sft.lora=true sft.packing=true

Follows InstructGPT's supervised step (Ouyang et al. 2022): next-token cross-entropy on demonstrations,
with the prompt (system/user turns, the <|assistant|> header) and calculator output excluded from the
loss (stages/data/chat.py). Our own loop on accelerate, not TRL's SFTTrainer: the masks are ours
anyway, the loop starts in well under a second here, and it keeps one exact property: the loss of a
step is summed over the step's trained tokens on every process and divided by their global count, so
N processes x micro-batch b compute the same update as 1 process x N*b (TRL normalises per process).

- Data: `sft.datasets` entries are "builtin" / "tasks" (demonstrations of the `sft.tasks` sources, train
  split: stages/data/tasks/sources.py; the built-in families by default) or conversation datasets
  (stages/data/conversations.py). Malformed and over-long rows are skipped, counted, and listed with
  file:line in data_report.json.
- Packing (optional): conversations are best-fit into max_length rows with position ids restarting
  at each conversation; with no attention mask transformers then builds a block-diagonal causal mask,
  so a conversation never attends to its neighbours (unlike pretraining-style packing).
- LoRA (optional, peft): adapters on every linear layer, merged into the weights at the end, so the
  output is a plain HF model dir.
- Eval at the end: held-out prompts of each task source (eval.tasks, else sft's), accuracy and format
  compliance, for the starting model (base/...) and the SFT model (eval/...); the calculator family also
  without the tool.
"""
from __future__ import annotations

import random
import time

import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from stages.data.chat import IGNORE, render_training
from stages.data.conversations import SkipReport, load_conversations
from stages.data.tasks import DEFAULT_SYSTEM, FAMILIES
from stages.data.tasks.sources import label_of, load_tasks, sft_train_count, source_of, stage_sources
from stages.eval_tasks import evaluate_families


# ---------------------------------------------------------------- data
def check_families(cfg) -> list[str]:
    """sft's task sources (sft.tasks, else the built-in families), checked again for recipes built in code."""
    bad = [f for f in cfg.families if f not in FAMILIES]
    if bad:
        raise UserError(f"sft.families: unknown {', '.join(bad)}; expected some of {', '.join(FAMILIES)}")
    specs = list(cfg.tasks) if cfg.tasks is not None else list(cfg.families) or list(FAMILIES)
    labels = [label_of(s) for s in specs]
    bad = [f for f in cfg.family_weights if f not in labels and f not in FAMILIES]
    if bad:
        raise UserError(f"sft.family_weights: unknown {', '.join(bad)}; expected some of {', '.join(labels)}")
    if any(w < 0 for w in cfg.family_weights.values()):
        raise UserError("sft.family_weights: weights must be >= 0")
    return specs


def builtin_conversations(cfg, seed: int, families: list[str]) -> list[tuple[str, list[dict]]]:
    """The task sources' demonstrations (`families`: specs or built-in family names), shuffled; a multi_turn_share
    of them continue with the next task as a second user turn (when that one has no system prompt of its own),
    so the model also sees multi-turn chats."""
    items = []
    for spec in families:
        n = sft_train_count(cfg, spec)
        tasks = load_tasks(spec, n, seed, "train") if n > 0 else []
        source = source_of(spec)
        items += [(f"{source.kind}:{source.label}:{i}", t.messages) for i, t in enumerate(tasks)]
    rng = random.Random(f"{seed}:sft:builtin")
    rng.shuffle(items)
    out, i = [], 0
    while i < len(items):
        where, messages = items[i]
        i += 1
        if i < len(items) and items[i][1][0]["role"] != "system" and rng.random() < cfg.multi_turn_share:
            where, messages = f"{where}+{items[i][0]}", messages + items[i][1]
            i += 1
        out.append((where, messages))
    return out


def build_examples(cfg, tokenizer, seed: int, families: list[str], report: SkipReport) -> list[tuple[list, list]]:
    """(input_ids, labels) for every usable conversation of every dataset, in dataset order."""
    conversations: list[tuple[str, list[dict]]] = []
    for spec in cfg.datasets:
        if spec in ("builtin", "tasks"):
            builtin = builtin_conversations(cfg, seed, families)
            conversations += builtin
            report.kept += len(builtin)
        else:
            conversations += load_conversations(spec, report, max_rows=cfg.dataset_max_rows)
    examples = []
    for where, messages in conversations:
        encoded = render_training(tokenizer, messages, cfg.max_length)
        if encoded is None:
            report.skip(where, f"over-long: more than sft.max_length={cfg.max_length} tokens")
            report.kept -= 1
            continue
        examples.append(encoded)
    return examples


def pack(examples: list[tuple[list, list]], max_length: int, pad_id: int) -> list[tuple[list, list, list]]:
    """Best-fit packing into rows of exactly max_length: (input_ids, labels, position_ids).

    Each conversation goes into the open row with the least room that still fits it (rows are found by
    their free space, so this is O(n * max_length)); padding fills what is left."""
    rows: list[list] = []                      # [ids, labels, positions]
    by_room: dict[int, list[int]] = {}         # free tokens -> rows with exactly that much room
    for ex_ids, ex_labels in examples:
        need = len(ex_ids)
        room = next((r for r in range(need, max_length + 1) if by_room.get(r)), None)
        if room is None:
            rows.append([[], [], []])
            index, room = len(rows) - 1, max_length
        else:
            index = by_room[room].pop()
        ids, labels, pos = rows[index]
        ids += ex_ids
        labels += ex_labels
        pos += range(need)
        by_room.setdefault(room - need, []).append(index)
    out = []
    for ids, labels, pos in rows:
        fill = max_length - len(ids)
        out.append((ids + [pad_id] * fill, labels + [IGNORE] * fill, pos + list(range(fill))))
    return out


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


# ---------------------------------------------------------------- model
def add_lora(model, cfg):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model):
    """A peft model -> the plain transformers model with the adapters folded into its weights."""
    return model.merge_and_unload()


def load_start_model(path: str):
    from stages.model import load_causal_lm
    from stages.tokenizer import ensure_chat_tokens
    try:
        model, tokenizer = load_causal_lm(path)
    except OSError as exc:
        raise UserError(f"sft.from / inputs.model: cannot load '{path}' as an HF causal LM ({exc})") from None
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


def evaluate(model, tokenizer, cfg, families: list[str], seed: int, prefix: str, no_tool: bool):
    """Held-out family metrics under `prefix`, plus <prefix>/acc_no_tool/calculator when asked."""
    kwargs = dict(n_per_family=cfg.builtin_test_per_family, seed=seed, max_new_tokens=cfg.eval_max_new_tokens)
    metrics, rows = evaluate_families(model, tokenizer, families, prefix=prefix, return_rows=True, **kwargs)
    if no_tool and "calculator" in [label_of(f) for f in families]:
        bare = evaluate_families(model, tokenizer, ["calculator"], use_tools=False, prefix="bare", **kwargs)
        metrics[f"{prefix}/acc_no_tool/calculator"] = bare["bare/acc/calculator"]
        metrics[f"{prefix}/format_no_tool/calculator"] = bare["bare/format/calculator"]
    return metrics, rows


def run(recipe, inputs, ctx) -> dict[str, float]:
    from accelerate import Accelerator
    from pipeline.distributed import configure_engine, partitions_at_load, save_model_gathered, whole_model_loading
    from stages.optim import make_optimizer, make_scheduler
    cfg = recipe.sft
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    world, main = accelerator.num_processes, accelerator.is_main_process
    model, tokenizer = load_start_model(inputs["model"])
    families = check_families(cfg)
    eval_specs = stage_sources(recipe, "sft_eval")
    report = SkipReport()
    examples = build_examples(cfg, tokenizer, recipe.seed, families, report)
    if main:
        report.write(ctx.out_dir / "data_report.json")
    ctx.log(f"data: {report.summary()} (each skipped row: data_report.json)")
    if not examples:
        raise UserError(f"sft.datasets: no usable conversations in {cfg.datasets} ({report.summary()})")
    pad_id = tokenizer.pad_token_id
    rows = pack(examples, cfg.max_length, pad_id) if cfg.packing else [(i, l, None) for i, l in examples]
    per_step = cfg.micro_batch_size * cfg.grad_accum * world
    schedule = StepSchedule(len(rows), per_step, recipe.seed)
    ctx.log(f"{len(examples)} conversations -> {len(rows)} rows{' (packed)' if cfg.packing else ''} | {world} "
            f"process(es) x {cfg.micro_batch_size} x {cfg.grad_accum} accum = {per_step} rows/step | "
            f"{cfg.max_steps} steps = {cfg.max_steps * per_step / len(rows):.2f} epochs")

    model.to(accelerator.device)
    metrics: dict[str, float] = {}
    if cfg.eval_base and main:
        base_model = model
        if partitions_at_load(accelerator):  # [scale-out] under ZeRO-3 `model` holds only this rank's shard
            with whole_model_loading(accelerator):
                base_model = load_start_model(inputs["model"])[0].to(accelerator.device)
        base, _ = evaluate(base_model, tokenizer, cfg, eval_specs, recipe.seed, "base", no_tool=False)
        del base_model
        metrics.update(base)
        ctx.log("base: " + _summary(base, "base"))
    accelerator.wait_for_everyone()
    if cfg.lora:
        model = add_lora(model, cfg)
    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    accelerator.gradient_accumulation_steps = cfg.grad_accum  # [scale-out] what accumulate() and DeepSpeed count
    configure_engine(accelerator, micro_batch_size=cfg.micro_batch_size, grad_clip=cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    trained_tokens = 0
    for step in range(cfg.max_steps):
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss, n_tokens = train_step(model, optimizer, scheduler, accelerator,
                                    [rows[i] for i in schedule.rows(step)], cfg, pad_id)
        trained_tokens += n_tokens
        ctx.tracker.log({"train/loss": loss, "train/lr": lr, "train/tokens_per_s": n_tokens / (time.perf_counter() - t0),
                         "train/epoch": (step + 1) * per_step / len(rows)}, step=step + 1, total=cfg.max_steps)
    metrics["train/loss"] = loss
    metrics["train/tokens"] = float(trained_tokens)  # every rank's rows (packed tokens incl. prompts)

    if cfg.lora:
        merged = merge_lora(accelerator.unwrap_model(model))
        if main:
            from stages.model import save_model
            save_model(merged, tokenizer, ctx.out_dir)
        accelerator.wait_for_everyone()
    else:
        save_model_gathered(accelerator, model, tokenizer, ctx.out_dir)
    del model, optimizer
    if main:
        (ctx.out_dir / "system_prompt.txt").write_text(cfg.system_prompt or DEFAULT_SYSTEM)
        # evaluate what was saved: the artifact the next stage gets, whole under any engine
        from stages.model import load_causal_lm
        with whole_model_loading(accelerator):
            model, _ = load_causal_lm(ctx.out_dir, device=str(accelerator.device))
        final, table = evaluate(model, tokenizer, cfg, eval_specs, recipe.seed, "eval", no_tool=True)
        metrics.update(final)
        ctx.tracker.table("samples", ["family", "prompt", "completion", "answer", "score", "well_formed"],
                          [r for f in map(label_of, eval_specs) for r in [x for x in table if x[0] == f][:3]])
        ctx.log("sft: " + _summary(final, "eval"))
        ctx.tracker.log(metrics, step=cfg.max_steps)
    accelerator.wait_for_everyone()
    return metrics


def _summary(metrics: dict[str, float], prefix: str) -> str:
    parts = [f"{k.split('/')[-1]} {v:.0%}" for k, v in metrics.items() if k.startswith(f"{prefix}/acc/")]
    return f"format {metrics.get(f'{prefix}/format', 0):.0%} | acc " + ", ".join(parts)
