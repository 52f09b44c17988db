"""The `rl` stage: GRPO on verifiable rewards or PPO against the reward model, evaluated before and after.

    lifecycle run recipes/tiny.yaml --stages rl                       # GRPO (rl.algorithm: grpo)
    lifecycle run recipes/tiny.yaml --stages rl rl.algorithm=ppo      # PPO with the trained RM

Sections of run(), top to bottom:
1. load the policy (inputs["policy"]: the SFT dir or rl.from) and a frozen copy as the reference;
2. the reward mix (reward/combine.py): rl.rewards, default {verifier: 1} for GRPO, {rm: 1} for PPO;
3. held-out eval before RL (stages.eval_tasks.evaluate_families on eval.tasks, else every built-in family
   and rl's own task sources (stages/data/tasks/sources.py): greedy
   pass@1, pass@k at the sampling temperature; plus mean RM reward, KL to the reference and length
   on sampled completions; a table of samples);
4. readiness check (GRPO): pass@G at the sampling temperature and the share of prompt groups whose
   G rewards differ; below rl.readiness_min_signal the stage stops and says why, because a group of
   equal rewards has zero advantage and so zero gradient;
5. train (stages/grpo.py or stages/ppo.py), with the reward-hacking monitor when an RM is a reward;
6. save the HF dir, eval after, and the gain per family;
7. the equal-compute control (rl.control): the same SFT checkpoint trained further with SFT for the
   same wall time, evaluated the same way, so the report shows what RL bought beyond more SFT.
"""
from __future__ import annotations

import copy
import random
import shutil
import time
from pathlib import Path

import torch

from pipeline.errors import UserError
from stages.data.tasks.sources import load_tasks, rl_train_count, stage_sources

DEFAULT_REWARDS = {"grpo": {"verifier": 1.0}, "ppo": {"rm": 1.0}}
READINESS_PROMPTS = 16   # prompts in the readiness check (x G samples each)
STATS_PER_FAMILY = 16    # held-out prompts per family for RM reward / KL / length / sample table


def run(recipe, inputs, ctx) -> dict[str, float]:
    from accelerate import Accelerator

    from pipeline.distributed import configure_engine, save_model_gathered
    from reward.combine import RewardMix
    from stages.model import load_causal_lm, mask_padded_vocab
    from stages.optim import make_optimizer, make_scheduler
    from stages.rl_monitor import HackingMonitor

    cfg = recipe.rl
    families = train_families(cfg)
    accelerator = Accelerator()
    device = accelerator.device
    policy, tokenizer = load_causal_lm(inputs["policy"], device=str(device))
    mask_padded_vocab(policy, len(tokenizer))  # log-probs over the tokens the sampler can draw
    reference = frozen_copy(policy)
    rewards = cfg.rewards or DEFAULT_REWARDS[cfg.algorithm]
    mix = RewardMix(rewards, inputs.get("reward_model"), device=str(device))
    rm_fn = mix.parts.get("rm") or _load_rm(inputs.get("reward_model"), device)
    n_train = rl_train_count(cfg, len(families))
    train_tasks = [t for fam in families for t in make_tasks(fam, n_train, ctx.seed, "train")]
    ctx.log(f"{cfg.algorithm}: policy {inputs['policy']}, rewards {rewards}, train families {families}, "
            f"{len(train_tasks)} train prompts")

    metrics = {f"before/{k}": v for k, v in evaluate(policy, reference, tokenizer, recipe, rm_fn, ctx, "before").items()}
    from stages.vllm_generation import make_sampler
    sampler = make_sampler(cfg, inputs["policy"], tokenizer, accelerator)  # None: HF generate
    ctx.log(f"rollouts: {'vLLM (colocated)' if sampler else 'HF generate'} | {accelerator.num_processes} process(es) x "
            f"{cfg.prompts_per_step} prompts x {cfg.num_generations} samples per step")
    if cfg.algorithm == "grpo":
        metrics.update(readiness(policy, tokenizer, train_tasks, mix, cfg, ctx, sampler))

    optimizer = make_optimizer(policy, cfg.optim, str(device))
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    configure_engine(accelerator, micro_batch_size=cfg.micro_batch_size, grad_clip=cfg.optim.grad_clip)
    monitor = HackingMonitor(cfg.monitor_window, cfg.stop_on_hacking, warn=ctx.log) if rm_fn else None
    if cfg.algorithm == "grpo":
        from stages import grpo
        policy, optimizer = accelerator.prepare(policy, optimizer)
        ref_for_loss = reference if cfg.beta > 0 else None
        train_metrics = grpo.train(policy, ref_for_loss, tokenizer, train_tasks, mix, cfg, ctx, accelerator,
                                   optimizer, scheduler, monitor, micro=cfg.micro_batch_size, sampler=sampler)
    else:
        from stages import ppo
        policy, train_metrics = ppo.train(policy, reference, tokenizer, train_tasks, mix, inputs["reward_model"],
                                          recipe, ctx, accelerator, optimizer, scheduler, monitor, sampler)
    metrics.update({k: v for k, v in train_metrics.items() if k.startswith(("train/", "reward/", "monitor/"))})
    save_model_gathered(accelerator, policy, tokenizer, ctx.out_dir)
    system_prompt = Path(inputs["policy"]) / "system_prompt.txt"   # what `lifecycle chat` uses with the SFT model
    if accelerator.is_main_process and system_prompt.is_file():
        shutil.copy(system_prompt, ctx.out_dir / "system_prompt.txt")

    policy = accelerator.unwrap_model(policy)
    after = evaluate(policy, reference, tokenizer, recipe, rm_fn, ctx, "after")
    metrics.update(after)
    metrics.update(gains(metrics, "before/eval/", "eval/", "gain"))
    if cfg.control and accelerator.is_main_process:
        metrics.update(equal_compute_control(inputs["policy"], recipe, metrics["train/wall_s"], reference,
                                             rm_fn, ctx))
        metrics.update(gains(metrics, "before/eval/", "control/eval/", "control_gain"))
    ctx.log(summary_line(metrics))
    return metrics


def train_families(cfg) -> list[str]:
    """rl's task sources: rl.tasks, else its built-in families (all six by default)."""
    from stages.data.tasks import FAMILIES
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown:
        raise UserError(f"rl.families: unknown family {unknown[0]!r}; expected some of {', '.join(FAMILIES)}")
    return list(cfg.tasks) if cfg.tasks is not None else list(cfg.families) or list(FAMILIES)


def make_tasks(family, n, seed, split):
    """Tasks of one source (a spec or a built-in family name)."""
    return load_tasks(family, n, seed, split)


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _load_rm(path, device):
    if not path:
        return None
    from reward.model_scorer import load_reward_fn
    return load_reward_fn(path, device=str(device))


# ---------------------------------------------------------------- readiness
def readiness(policy, tokenizer, tasks, mix, cfg, ctx, sampler=None) -> dict[str, float]:
    """pass@G and the share of groups with reward variance, in seconds; stop with a diagnosis if too low."""
    from stages.grpo import gold_rewards, reference_overflow, sample_groups
    from stages.losses import zero_variance_fraction
    from reward.verifiers import extract_answers
    G = cfg.num_generations
    cut, longest = reference_overflow(tokenizer, tasks, cfg.max_new_tokens)
    if cut > 0:
        ctx.log(f"WARNING: rl.max_new_tokens={cfg.max_new_tokens} cuts off {cut:.0%} of the training prompts' "
                f"reference answers (longest {longest} tokens): those prompts can never be rewarded")
    picked = random.Random(ctx.seed).sample(tasks, min(READINESS_PROMPTS, len(tasks)))
    t0 = time.time()
    comps, prompts, fields = sample_groups(policy, tokenizer, picked, cfg, G, seed=ctx.seed, sampler=sampler)
    total, parts = mix(prompts, [c.text for c in comps], **fields)
    gold = torch.tensor(gold_rewards(parts, prompts, comps, fields)).view(-1, G)       # (prompts, G)
    signal = 1.0 - zero_variance_fraction(torch.tensor(total), G)
    answers = extract_answers([c.text for c in comps])
    all_wrong = [i for i in range(len(picked)) if gold[i].max() == 0]
    systematic = [i for i in all_wrong if answers[i * G] is not None and len(set(answers[i * G:(i + 1) * G])) == 1]
    out = {"ready/pass@1": float(gold.mean()), f"ready/pass@{G}": float((gold.max(1).values > 0).float().mean()),
           "ready/signal_groups": signal, "ready/all_right_groups": float((gold.min(1).values > 0).float().mean()),
           "ready/systematic_groups": len(systematic) / len(picked), "ready/reference_cut": cut}
    nucleus = f", top_p {cfg.top_p}" if cfg.top_p < 1 else ""
    ctx.log(f"readiness ({time.time() - t0:.1f}s, {len(picked)} prompts x G={G} at T={cfg.temperature}{nucleus}): "
            f"pass@1 {out['ready/pass@1']:.1%}, pass@{G} {out[f'ready/pass@{G}']:.1%}, "
            f"groups with reward signal {signal:.1%}")
    if signal < cfg.readiness_min_signal:
        raise UserError(f"rl.readiness_min_signal: only {signal:.0%} of prompt groups have rewards that differ "
                        f"(need {cfg.readiness_min_signal:.0%}), so GRPO would see a zero gradient; "
                        f"{diagnose(out, G, len(all_wrong), len(systematic), len(picked))}; "
                        f"set rl.readiness_min_signal=0 to run anyway")
    return out


def diagnose(out, G, n_wrong, n_systematic, n) -> str:
    if out["ready/all_right_groups"] >= 0.5:
        return (f"the policy already solves these prompts ({out['ready/all_right_groups']:.0%} of groups all "
                f"right): train on harder families")
    if n_wrong and n_systematic >= n_wrong / 2:
        return (f"the errors are systematic: in {n_systematic} of {n_wrong} all-wrong groups every sample gives "
                f"the same wrong answer, so sampling never finds a right one; fix it with SFT data, not RL")
    if out[f"ready/pass@{G}"] < 0.4:
        return (f"the policy is too weak: pass@{G} at this temperature is {out[f'ready/pass@{G}']:.0%} "
                f"(pass@1 {out['ready/pass@1']:.0%}); train SFT longer, raise rl.num_generations or "
                f"rl.temperature, or pick easier families")
    return "the reward does not vary between samples: check rl.rewards"


# ---------------------------------------------------------------- held-out eval
def evaluate(model, reference, tokenizer, recipe, rm_fn, ctx, tag: str) -> dict[str, float]:
    """eval/* metrics on held-out prompts of every eval source (stage_sources "rl_eval"), and a table of samples."""
    from stages.eval_tasks import evaluate_families
    cfg, ev = recipe.rl, recipe.eval
    specs = stage_sources(recipe, "rl_eval")
    t0 = time.time()
    out = evaluate_families(model, tokenizer, specs, ev.max_prompts_per_family, ctx.seed,
                            ev.max_new_tokens, use_tools=True, samples=1, temperature=0.0)
    if cfg.eval_samples > 1:
        passk = evaluate_families(model, tokenizer, specs, ev.max_prompts_per_family, ctx.seed,
                                  ev.max_new_tokens, use_tools=True, samples=cfg.eval_samples,
                                  temperature=cfg.temperature)
        out.update({k: v for k, v in passk.items() if k.startswith("eval/pass@")})
    out.update(sampled_stats(model, reference, tokenizer, recipe, rm_fn, ctx, tag))
    ctx.log(f"eval {tag} ({time.time() - t0:.0f}s): " + ", ".join(
        f"{k.split('/', 1)[1]} {v:.3f}" for k, v in out.items() if k.startswith("eval/acc/")))
    return out


@torch.no_grad()
def sampled_stats(model, reference, tokenizer, recipe, rm_fn, ctx, tag) -> dict[str, float]:
    """Mean RM reward, KL(policy || reference) per completion and length on sampled held-out completions."""
    from stages.data.tasks import score
    from stages.grpo import batched_logps, collate, sample_groups
    cfg = recipe.rl
    n = min(STATS_PER_FAMILY, recipe.eval.max_prompts_per_family)
    groups = [make_tasks(spec, n, ctx.seed, "test") for spec in stage_sources(recipe, "rl_eval")]
    tasks = [t for group in groups for t in group]
    comps, prompts, fields = sample_groups(model, tokenizer, tasks, cfg, 1, seed=ctx.seed + 7)
    texts = [c.text for c in comps]
    device = next(model.parameters()).device
    batch = collate(comps, tokenizer.pad_token_id, device)
    logps = batched_logps(model, batch, cfg.micro_batch_size, cfg.temperature)
    ref_logps = batched_logps(reference, batch, cfg.micro_batch_size, cfg.temperature)
    mask = batch["completion_mask"]
    out = {"eval/kl": float(((logps - ref_logps) * mask).sum(-1).mean()),
           "eval/length": float(mask.sum(-1).mean())}
    rm_scores = rm_fn(prompts, texts, **fields) if rm_fn else [None] * len(texts)
    if rm_fn:
        out["eval/rm_reward"] = float(sum(rm_scores) / len(rm_scores))
    first_two = [j < 2 for group in groups for j in range(len(group))]
    rows = [[tag, t.family, prompts[i], texts[i], score(t, texts[i]), rm_scores[i]]
            for i, t in enumerate(tasks) if first_two[i]]
    ctx.tracker.table(f"samples/{tag}", ["when", "family", "prompt", "completion", "correct", "rm"], rows)
    return out


def gains(metrics: dict, before: str, after: str, name: str) -> dict[str, float]:
    """<name>/acc[/<family>] = after - before, for each accuracy both evals have.
    before/after are key prefixes such as "before/eval/" and "eval/"."""
    out = {}
    for key in list(metrics):
        if key.startswith(after + "acc") and not key.startswith(after + "acc_"):
            rest = key[len(after):]                          # "acc" or "acc/<family>"
            if before + rest in metrics:
                out[f"{name}/{rest}"] = metrics[key] - metrics[before + rest]
    return out


def summary_line(metrics: dict) -> str:
    """One line per family: before -> after RL (and the equal-compute SFT control)."""
    parts = []
    for key in sorted(k for k in metrics if k.startswith("gain/acc/")):
        family = key.split("/")[-1]
        text = f"{family} {metrics['before/eval/acc/' + family]:.2f}->{metrics['eval/acc/' + family]:.2f}"
        if f"control/eval/acc/{family}" in metrics:
            text += f" (SFT control {metrics[f'control/eval/acc/{family}']:.2f})"
        parts.append(text)
    return "held-out accuracy before->after RL: " + "; ".join(parts)


def equal_compute_control(policy_path, recipe, wall_s, reference, rm_fn, ctx) -> dict[str, float]:
    """The SFT checkpoint trained further with SFT for RL's wall time, evaluated like RL."""
    from stages.rl_control import continue_sft
    ctx.log(f"equal-compute control: SFT from {policy_path} for {wall_s:.0f}s (RL's training wall time)")
    model, tokenizer, info = continue_sft(policy_path, recipe, wall_s, ctx)
    out = evaluate(model, reference, tokenizer, recipe, rm_fn, ctx, "control")
    metrics = {f"control/{k}": v for k, v in out.items()}
    metrics.update({f"control/{k}": float(v) for k, v in info.items()})
    return metrics
