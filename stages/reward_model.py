"""The `rm` stage: a reward model trained on K-way rankings of rollouts, as in InstructGPT (Ouyang et al. 2022).

    lifecycle run recipes/tiny.yaml --stages rm        # = make rm (rollouts first, resumable)

Steps: (1) K rollouts per prompt from the SFT policy (stages/rollout.py) into runs/<name>/rollouts.jsonl;
(2) rankings from the sources `rm.rankers` mixes (verifier, judge, human; reward/ranking.py), plus any
chosen/rejected datasets as K=2; (3) AutoModelForSequenceClassification(num_labels=1) initialised from
the SFT checkpoint with its tokenizer; (4) per prompt, all C(K,2) ranked pairs in one batch element:
loss = -mean log sigmoid(r_w - r_l), with ONE forward pass per completion (K per prompt, every pair's
margin taken from those K scalars); (5) centring: the mean reward of reference answers is stored as
config.reward_offset and subtracted by reward/model_scorer.py; (6) held-out pairwise and top-1 accuracy
per family, agreement with the verifier's gold ranking (with a 95% interval over prompts), a reward
histogram (reward_hist.png).

Option `rm.process_coef` adds a per-token loss (process supervision, Lightman et al. 2023): the same
score head, read at every completion token, learns whether the completion is still on a path to a right
answer there (`process_labels`). The RM still reads the last token; the extra targets teach it where
answers go wrong, which one bit per ranked pair barely does.

Departures: InstructGPT centred on labeler demonstrations; we use the tasks' reference answers (else the
best-ranked completions). HF's score head has no bias, so the shift lives in config.json, not the weights.
Ties (equal ranks) give no pair. Our own loop on accelerate, as TRL's RewardTrainer takes pairs only.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import UserError
from reward.model_scorer import reward_logits, rm_input_ids
from reward.ranking import TOP_TIER, Ranked, collect_rankings, load_pairs, ranking_pairs
from stages.lm.losses import kway_ranking_loss, process_loss


@dataclass
class Example:
    seqs: list[list[int]]     # one token-id sequence (prompt + completion) per completion
    ranks: list[int]          # 0 = best, equal = tie
    family: str
    gold: list[int] | None    # verifier tiers, higher = better
    source: str
    labels: list[list[int]] | None = None  # per token of each seq, for rm.process_coef (process_labels)


# ---------------------------------------------------------------- model + tokenizer
def load_reward_model(model_dir: str, device):
    """The SFT checkpoint as a sequence classifier (num_labels=1) and its tokenizer, checked to match."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from stages.tokenizer import END
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"rm: no tokenizer in '{model_dir}' (the RM shares the SFT model's tokenizer): {exc}") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is expected: the head is new
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 loads it partitioned (empty)
    if len(tokenizer) > rows:
        raise UserError(f"rm: tokenizer of '{model_dir}' has {len(tokenizer)} tokens but the model embeds {rows}; "
                        "the RM must share the SFT model's tokenizer")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        want, got = getattr(model.config, name, None), getattr(tokenizer, name)
        if want is not None and got is not None and want != got:
            raise UserError(f"rm: tokenizer of '{model_dir}' has {name}={got} but the model was trained with {want}; "
                            "the RM must share the SFT model's tokenizer")
    if END not in tokenizer.get_vocab() or tokenizer.pad_token_id is None:
        raise UserError(f"rm: tokenizer of '{model_dir}' lacks the chat tokens ({END}, pad); init the RM from a "
                        "model trained with this project's tokenizer (or one passed through ensure_chat_tokens)")
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads each sequence's last non-pad token
    return model.to(device), tokenizer


def encode(ranked: list[Ranked], tokenizer, max_length: int, process: bool = False) -> list[Example]:
    """Token ids of every completion (and, with process=True, per-token process labels where the prompt has
    a reference answer and verifier tiers)."""
    from stages.data.chat import render_text

    def token_ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for r in ranked:
        prompt = render_text(tokenizer, r.prompt_messages, add_generation_prompt=True) if r.prompt_messages else ""
        seqs = [rm_input_ids(tokenizer, prompt, c, max_length) for c in r.completions]
        labels = None
        if process and r.reference and r.gold:
            reference = token_ids(r.reference)
            labels = [process_labels(seq, token_ids(c), reference, tier)
                      for seq, c, tier in zip(seqs, r.completions, r.gold)]
        out.append(Example(seqs, r.ranks, r.family, r.gold, r.source, labels))
    return out


def process_labels(seq: list[int], completion: list[int], reference: list[int], tier: int) -> list[int]:
    """Per-token targets of seq (prompt + completion ids, maybe cut on the left) for the process loss.

    -1 on the prompt. On the completion, 1 while it is still on a path to a right, well-formed answer and
    0 from its first wrong token: every token when the verifier rates it correct and well formed, else the
    tokens before the first one that differs from the task's reference answer (at the latest its last token:
    a completion cut short went wrong by stopping). The built-in tasks' working is deterministic, so that
    token is the first mistake. All -1 when seq does not end with the completion."""
    n = min(len(seq), len(completion))
    if seq[len(seq) - n:] != completion[len(completion) - n:]:
        return [-1] * len(seq)
    good = len(completion)
    if tier < TOP_TIER:
        good = 0
        while good < min(len(completion), len(reference)) and completion[good] == reference[good]:
            good += 1
        good = min(good, len(completion) - 1)
    start = len(seq) - len(completion)  # where completion token 0 sits (negative when cut)
    return [-1 if p < start else int(p - start < good) for p in range(len(seq))]


def is_test(key: str, fraction: float) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_key(r: Ranked) -> str:
    """What the held-out split hashes: the prompt's text, so a prompt drawn twice (identity and "I don't know"
    questions come from small pools and repeat under different ids) is never on both sides; the prompt id
    where there is no prompt (whole-text pairs)."""
    return json.dumps(r.prompt_messages, sort_keys=True) if r.prompt_messages else r.prompt_id


# ---------------------------------------------------------------- batches and the loop
def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """B prompts with up to K completions -> N = sum K sequences (one forward each) + (B, K) ranks."""
    k = max(len(e.seqs) for e in examples)
    seqs = [s for e in examples for s in e.seqs]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)       # (N, T) right-padded
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)         # (N, T)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
    ranks = torch.full((len(examples), k), -1, dtype=torch.long)               # (B, K), -1 = no completion
    slots = []                                                                  # (N,) position in the (B*K) grid
    for b, e in enumerate(examples):
        ranks[b, :len(e.ranks)] = torch.tensor(e.ranks, dtype=torch.long)
        slots += [b * k + j for j in range(len(e.seqs))]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "ranks": ranks,
           "slots": torch.tensor(slots, dtype=torch.long)}
    if any(e.labels for e in examples):
        labels = torch.full((len(seqs), width), -1, dtype=torch.long)          # (N, T), -1 = not scored
        rows = [lab for e in examples for lab in (e.labels or [[-1] * len(s) for s in e.seqs])]
        for i, lab in enumerate(rows):
            labels[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        out["token_labels"] = labels
    return out


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


def global_batches(n: int, per_step: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: a seeded shuffle per epoch cut into chunks of per_step.

    A short last chunk is dropped (as DataLoader's drop_last), so that N processes x b prompts step
    exactly like 1 process x N*b: each chunk holds N x prompts_per_batch prompts and every rank takes
    its slice.
    """
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        batches += [order[i:i + per_step] for i in range(0, n - per_step + 1, per_step)]
    return batches


def train(model, examples: list[Example], cfg, ctx, accelerator, pad_id: int) -> float:
    from pipeline.distributed import configure_engine, rank_slice
    from stages.lm.optim import make_optimizer, make_scheduler
    examples = [e for e in examples if ranking_pairs(e.ranks)]  # all-tied prompts carry no signal
    if not examples:
        raise UserError("rm: no training prompt has two differently ranked completions (all ties); "
                        "more prompts, a higher rm.temperature, or rm.tie_break: shorter")
    world = accelerator.num_processes
    batches = global_batches(len(examples), cfg.prompts_per_batch * world, cfg.epochs, ctx.seed)
    if not batches:
        raise UserError(f"rm: {len(examples)} training prompts make no step of {cfg.prompts_per_batch} prompts x "
                        f"{world} processes; lower rm.prompts_per_batch or add prompts")
    optimizer = make_optimizer(model, cfg.optim, accelerator.device.type)
    configure_engine(accelerator, micro_batch_size=cfg.prompts_per_batch, grad_clip=cfg.optim.grad_clip)
    model, optimizer = accelerator.prepare(model, optimizer)
    total = len(batches)
    scheduler = make_scheduler(optimizer, cfg.optim, total)  # stepped by us once per step (not prepared)
    every = max(1, total // 100)
    loss_value = float("nan")
    model.train()
    for step, batch in enumerate(batches, start=1):
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
    tokens = sum(len(s) for batch in batches for i in batch for s in examples[i].seqs)
    return model, loss_value, float(tokens)


# ---------------------------------------------------------------- eval
def score_examples(model, examples: list[Example], pad_id: int, device, offset: float = 0.0) -> list[torch.Tensor]:
    flat = [s for e in examples for s in e.seqs]
    scores = reward_logits(model, flat, pad_id, 32, device) - offset if flat else torch.empty(0)
    out, pos = [], 0
    for e in examples:
        out.append(scores[pos:pos + len(e.seqs)])
        pos += len(e.seqs)
    return out


def ranking_metrics(examples: list[Example], rewards: list[torch.Tensor]) -> dict[str, float]:
    """Pairwise/top-1 accuracy against the training ranking and against the gold (verifier) ranking."""
    tally: dict[str, list[float]] = {}
    gold_by_prompt: list[list[float]] = []  # the gold pairs' hits of each prompt, for the interval

    def add(key: str, value: float) -> None:
        tally.setdefault(key, []).append(value)

    for e, r in zip(examples, rewards):
        for prefix, ranks in (("", e.ranks), ("gold_", [-t for t in e.gold] if e.gold else None)):
            pairs = ranking_pairs([x - min(ranks) for x in ranks]) if ranks else []
            if not pairs:
                continue
            hits = [float(r[w] > r[l]) for w, l in pairs]
            if prefix:
                gold_by_prompt.append(hits)
            for (w, l), hit in zip(pairs, hits):
                add(f"eval/{prefix}pairwise_acc", hit)
                add(f"eval/{prefix}pairwise_acc/{e.family}", hit)
                if prefix:  # gold pairs split by what separates them: the answer's truth, or only its form
                    kind = "correctness" if (e.gold[w] >= 2) != (e.gold[l] >= 2) else "format"
                    add(f"eval/gold_pairwise_acc_{kind}", hit)
            best = [i for i, x in enumerate(ranks) if x == min(ranks)]
            add(f"eval/{prefix}top1_acc", float(int(r.argmax()) in best))
            add(f"eval/{prefix}top1_chance", len(best) / len(ranks))
    metrics = {key: sum(v) / len(v) for key, v in tally.items()}
    for prefix in ("", "gold_"):
        metrics[f"eval/{prefix}n_pairs"] = float(len(tally.get(f"eval/{prefix}pairwise_acc", [])))
        for key, v in tally.items():
            if key.startswith(f"eval/{prefix}pairwise_acc/"):
                metrics[f"eval/{prefix}n_pairs/{key.rsplit('/', 1)[1]}"] = float(len(v))
    for kind in ("correctness", "format"):
        metrics[f"eval/gold_n_pairs_{kind}"] = float(len(tally.get(f"eval/gold_pairwise_acc_{kind}", [])))
    metrics["eval/chance"] = 0.5  # a random scorer orders a strict pair right half the time
    if gold_by_prompt:
        metrics["eval/gold_pairwise_acc_ci95_low"], metrics["eval/gold_pairwise_acc_ci95_high"] = \
            prompt_bootstrap_ci(gold_by_prompt)
    return metrics


def prompt_bootstrap_ci(hits_by_prompt: list[list[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of pairwise accuracy, resampling whole prompts (a prompt's pairs share its
    completions, so they are not independent: a pair bootstrap would be too narrow)."""
    gen = torch.Generator().manual_seed(seed)
    sums = torch.tensor([sum(h) for h in hits_by_prompt], dtype=torch.float64)
    counts = torch.tensor([len(h) for h in hits_by_prompt], dtype=torch.float64)
    picks = torch.randint(len(hits_by_prompt), (n_boot, len(hits_by_prompt)), generator=gen)
    accs = (sums[picks].sum(1) / counts[picks].sum(1)).sort().values
    return float(accs[int(0.025 * (n_boot - 1))]), float(accs[int(0.975 * (n_boot - 1))])


def plot_histogram(examples: list[Example], rewards: list[torch.Tensor], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = {3: "correct, well formed", 2: "correct, malformed", 1: "wrong, well formed", 0: "wrong, malformed"}
    groups: dict[str, list[float]] = {}
    for e, r in zip(examples, rewards):
        labels = [names[t] for t in e.gold] if e.gold else [f"rank {x}" for x in e.ranks]
        for label, value in zip(labels, r.tolist()):
            groups.setdefault(label, []).append(value)
    values = [v for g in groups.values() for v in g]
    lo, hi = min(values), max(values)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]  # shared bins: tiers comparable
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in sorted(groups):
        ax.hist(groups[label], bins=bins, alpha=0.6, label=f"{label} (n={len(groups[label])})")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel="reward (centred: reference answers average 0)", ylabel="completions",
           title="Held-out rewards by verifier tier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the stage
def gather_rankings(recipe, model_dir: str, ctx, accelerator) -> list[Ranked]:
    from stages.rl.rollout import read_rollouts, rollouts_for_recipe
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
    from accelerate import Accelerator
    from pipeline.distributed import save_model_gathered, whole_model_loading
    from stages.rl.rollout import tokenizer_hash
    cfg = recipe.rm
    # A plain Accelerator: under `accelerate launch` the launcher's environment picks the engine (DDP,
    # FSDP, ZeRO); in one process it runs on the GPU when there is one.
    accelerator = Accelerator(mixed_precision=recipe.distributed_for("rm").mixed_precision)
    ranked = gather_rankings(recipe, inputs["model"], ctx, accelerator)

    model, tokenizer = load_reward_model(inputs["model"], accelerator.device)
    ours = tokenizer_hash(tokenizer)
    if ctx.run_dir and (ctx.run_dir / "rollouts.jsonl").is_file():
        from stages.rl.rollout import read_rollouts
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
    save_model_gathered(accelerator, model, tokenizer, ctx.out_dir)
    del model
    metrics: dict[str, float] = {"train/final_loss": final_loss, "train/tokens": tokens}
    if accelerator.is_main_process:
        with whole_model_loading(accelerator):
            model, _ = load_reward_model(str(ctx.out_dir), accelerator.device)
        metrics.update(centre_and_evaluate(model.eval(), tokenizer, train_ranked, test_ex, cfg, ctx, accelerator.device))
        model.config.save_pretrained(ctx.out_dir)
    accelerator.wait_for_everyone()
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
        plot_histogram(test_ex, rewards, ctx.out_dir / "reward_hist.png")
        ctx.tracker.images({"eval/reward_hist": ctx.out_dir / "reward_hist.png"})
        rows = [[e.family, tokenizer.decode(e.seqs[i][-80:]), round(float(r[i]), 3), e.ranks[i],
                 e.gold[i] if e.gold else None] for e, r in list(zip(test_ex, rewards))[:10] for i in range(len(e.seqs))]
        ctx.tracker.table("eval/rm_samples", ["family", "completion_tail", "reward", "rank", "gold_tier"], rows)
    ctx.log("eval: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if "/" not in k[5:] and math.isfinite(v)))
    return metrics
