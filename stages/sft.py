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
- Resume: a checkpoint every `checkpoint_every` steps (model, optimizer, scheduler, RNG states, the step,
  the base eval; stages/lm/checkpoints.py); a rerun after a kill continues from the last one.
- Eval at the end: held-out prompts of each task source (eval.tasks, else sft's), accuracy and format
  compliance, for the starting model (base/...) and the SFT model (eval/...); the calculator family also
  without the tool.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from pipeline.distributed import configure_engine, partitions_at_load, save_model_gathered, whole_model_loading
from pipeline.errors import UserError
from pipeline.files import write_jsonl
from stages.data.conversations import SkipReport
from stages.data.facts import World, world_of
from stages.data.knowledge import knowledge_conversations, replay_examples
from stages.data.sft_examples import build_examples, pack, train_families
from stages.data.sources import iter_split
from stages.data.tasks import DEFAULT_SYSTEM
from stages.data.tasks.sources import label_of, stage_sources
from stages.eval.families import evaluate_families
from stages.eval.knowledge import LABELS, evaluate_knowledge, label, probe
from stages.lm.checkpoints import Checkpoints
from stages.lm.finetune import StepSchedule, add_lora, load_start_model, merge_lora, train_step
from stages.lm.model import load_causal_lm, save_model
from stages.lm.optim import make_optimizer, make_scheduler
from stages.tools.search import SearchIndex, passages_from_documents


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
    cfg = recipe.sft
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    world, main = accelerator.num_processes, accelerator.is_main_process
    model, tokenizer = load_start_model(inputs["model"])
    families = train_families(cfg)
    eval_specs = stage_sources(recipe, "sft_eval")
    report = SkipReport()
    knowledge = prepare_knowledge(recipe, model, tokenizer, ctx) if cfg.knowledge.questions else None
    extra = knowledge_conversations(knowledge.questions("train"), knowledge.labels, cfg.knowledge, knowledge.index,
                                    recipe.seed) if knowledge else []
    examples = build_examples(cfg, tokenizer, recipe.seed, families, report, extra)
    if knowledge and cfg.knowledge.replay:
        examples += replay_examples(knowledge.world, cfg.knowledge.replay, tokenizer, recipe.seed)
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
    ckpt = Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every)
    saved = ckpt.loop_state()  # on a resume: the base eval and the token count so far
    metrics: dict[str, float] = dict(saved.get("base", {}))
    if cfg.eval_base and main and not saved:
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
    accelerator.register_for_checkpointing(scheduler)
    start = ckpt.resume(ctx)
    base = dict(metrics)
    model.train()
    trained_tokens, loss = saved.get("tokens", 0), saved.get("loss", float("nan"))
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss, n_tokens = train_step(model, optimizer, scheduler, accelerator,
                                    [rows[i] for i in schedule.rows(step)], cfg, pad_id)
        trained_tokens += n_tokens
        ctx.tracker.log({"train/loss": loss, "train/lr": lr, "train/tokens_per_s": n_tokens / (time.perf_counter() - t0),
                         "train/epoch": (step + 1) * per_step / len(rows)}, step=step + 1, total=cfg.max_steps)
        ckpt.save_if_due(step + 1, cfg.max_steps, ctx, {"base": base, "tokens": trained_tokens, "loss": loss})
    metrics["train/loss"] = loss
    metrics["train/tokens"] = float(trained_tokens)  # every rank's rows (packed tokens incl. prompts)

    if cfg.lora:
        merged = merge_lora(accelerator.unwrap_model(model))
        if main:
            save_model(merged, tokenizer, ctx.out_dir)
        accelerator.wait_for_everyone()
    else:
        save_model_gathered(accelerator, model, tokenizer, ctx.out_dir)
    del model, optimizer
    if main:
        (ctx.out_dir / "system_prompt.txt").write_text(cfg.system_prompt or DEFAULT_SYSTEM)
        # evaluate what was saved: the artifact the next stage gets, whole under any engine
        with whole_model_loading(accelerator):
            model, _ = load_causal_lm(ctx.out_dir, device=str(accelerator.device))
        final, table = evaluate(model, tokenizer, cfg, eval_specs, recipe.seed, "eval", no_tool=True)
        metrics.update(final)
        ctx.tracker.table("samples", ["family", "prompt", "completion", "answer", "score", "well_formed"],
                          [r for f in map(label_of, eval_specs) for r in [x for x in table if x[0] == f][:3]])
        ctx.log("sft: " + _summary(final, "eval"))
        if knowledge:
            know, rows = evaluate_knowledge(model, tokenizer, knowledge.questions("test"), knowledge.labels,
                                            prefix="eval/knowledge", seed=recipe.seed, search=knowledge.index)
            metrics.update(know)
            write_jsonl(ctx.out_dir / "knowledge_eval.jsonl", rows)
            if knowledge.index is not None:  # chat, serve and RL read it from the model dir
                knowledge.index.save(ctx.out_dir)
            ctx.log("knowledge: " + knowledge_summary(know, "eval/knowledge"))
        ctx.tracker.log(metrics, step=cfg.max_steps)
    ckpt.finish(cfg.keep_checkpoints)
    return metrics


@dataclass
class KnowledgeSetup:
    world: World
    test_share: float
    labels: dict[str, str]          # question key -> known | unknown | unsure, by the probe of the start model
    index: SearchIndex | None       # the corpus's search index (None when no conversation looks things up)

    def questions(self, split: str):
        return self.world.questions(split, self.test_share)


def prepare_knowledge(recipe, model, tokenizer, ctx) -> KnowledgeSetup:
    """Probe the start model on every question of data.facts' world; build the search index over the corpus."""
    cfg = recipe.sft.knowledge
    world = world_of(recipe.data.facts)
    questions = world.questions(test_share=cfg.test_share)
    shares = probe(model, tokenizer, questions, cfg.probe_samples, recipe.seed)
    labels = {key: label(share, cfg.known_at, cfg.unknown_at) for key, share in shares.items()}
    counts = {lab: sum(v == lab for v in labels.values()) for lab in LABELS}
    ctx.log(f"knowledge probe of the start model ({cfg.probe_samples} samples per question): "
            + ", ".join(f"{n} {lab}" for lab, n in counts.items()))
    write_jsonl(ctx.out_dir / "knowledge_probe.jsonl",
                [{"key": q.key, "repeats": q.repeats, "split": q.split, "share_right": shares[q.key],
                  "label": labels[q.key]} for q in questions])
    index = None
    if cfg.search_share > 0:
        index = SearchIndex.build(passages_from_documents(doc for _, doc in iter_split(recipe.data, recipe.seed)))
    return KnowledgeSetup(world, cfg.test_share, labels, index)


def knowledge_summary(metrics: dict[str, float], prefix: str) -> str:
    return (f"acc {metrics[f'{prefix}/acc']:.0%}, refusals on unknown {metrics[f'{prefix}/refusal_unknown']:.0%}, "
            f"hallucinations on unknown {metrics[f'{prefix}/hallucination_unknown']:.0%}, false refusals on known "
            f"{metrics[f'{prefix}/false_refusal_known']:.0%}"
            + (f" | with search: acc {metrics[f'{prefix}/acc_search']:.0%}" if f"{prefix}/acc_search" in metrics else ""))


def _summary(metrics: dict[str, float], prefix: str) -> str:
    parts = [f"{k.split('/')[-1]} {v:.0%}" for k, v in metrics.items() if k.startswith(f"{prefix}/acc/")]
    return f"format {metrics.get(f'{prefix}/format', 0):.0%} | acc " + ", ".join(parts)
