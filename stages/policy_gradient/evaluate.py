"""What the rl stage measures around training: the readiness check before GRPO, the held-out eval
before and after (and of the equal-compute control), and the gains.

Readiness: pass@G at the sampling temperature and the share of prompt groups whose G rewards differ;
below rl.readiness_min_signal the stage stops and says why, because a group of equal rewards has zero
advantage and so zero gradient. Eval: greedy pass@1 (and pass@k at the sampling temperature) on
held-out prompts of every built-in family, plus mean RM reward, KL to the reference and length on
sampled completions, and a table of samples. The control: the starting checkpoint trained further
with SFT for RL's wall time (stages/policy_gradient/control.py), evaluated the same way.
"""
from __future__ import annotations

import random
import time

import torch

from pipeline.errors import UserError
from reward.verifiers import extract_answers
from stages.data.tasks import score
from stages.data.tasks.sources import load_tasks, stage_sources
from stages.eval.families import evaluate_families
from stages.lm.losses import zero_variance_fraction
from stages.policy_gradient.control import continue_sft
from stages.policy_gradient.rollout import batched_logps, collate, gold_rewards, reference_overflow, sample_groups

READINESS_PROMPTS = 16   # prompts in the readiness check (x G samples each)
STATS_PER_FAMILY = 16    # held-out prompts per family for RM reward / KL / length / sample table


# ---------------------------------------------------------------- readiness
def readiness(policy, tokenizer, tasks, mix, cfg, ctx, sampler=None, search=None) -> dict[str, float]:
    """pass@G and the share of groups with reward variance, in seconds; stop with a diagnosis if too low."""
    G = cfg.num_generations
    cut, longest = reference_overflow(tokenizer, tasks, cfg.max_new_tokens)
    if cut > 0:
        ctx.log(f"WARNING: rl.max_new_tokens={cfg.max_new_tokens} cuts off {cut:.0%} of the training prompts' "
                f"reference answers (longest {longest} tokens): those prompts can never be rewarded")
    picked = random.Random(ctx.seed).sample(tasks, min(READINESS_PROMPTS, len(tasks)))
    t0 = time.time()
    comps, prompts, fields = sample_groups(policy, tokenizer, picked, cfg, G, seed=ctx.seed, sampler=sampler,
                                           search=search)
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
def evaluate(model, reference, tokenizer, recipe, rm_fn, ctx, tag: str, search=None) -> dict[str, float]:
    """eval/* metrics on held-out prompts of every eval source (stage_sources "rl_eval"), and a table of samples.
    search: the stages.tools.search.SearchIndex that answers <|search|> calls, as in training."""
    specs = stage_sources(recipe, "rl_eval")
    cfg, ev = recipe.rl, recipe.eval
    t0 = time.time()
    out = evaluate_families(model, tokenizer, specs, ev.max_prompts_per_family, ctx.seed,
                            ev.max_new_tokens, use_tools=True, samples=1, temperature=0.0, search=search)
    if cfg.eval_samples > 1:
        passk = evaluate_families(model, tokenizer, specs, ev.max_prompts_per_family, ctx.seed,
                                  ev.max_new_tokens, use_tools=True, samples=cfg.eval_samples,
                                  temperature=cfg.temperature, search=search)
        out.update({k: v for k, v in passk.items() if k.startswith("eval/pass@")})
    out.update(sampled_stats(model, reference, tokenizer, recipe, rm_fn, ctx, tag, search))
    ctx.log(f"eval {tag} ({time.time() - t0:.0f}s): " + ", ".join(
        f"{k.split('/', 1)[1]} {v:.3f}" for k, v in out.items() if k.startswith("eval/acc/")))
    return out


@torch.no_grad()
def sampled_stats(model, reference, tokenizer, recipe, rm_fn, ctx, tag, search=None) -> dict[str, float]:
    """Mean RM reward, KL(policy || reference) per completion and length on sampled held-out completions."""
    cfg = recipe.rl
    n = min(STATS_PER_FAMILY, recipe.eval.max_prompts_per_family)
    groups = [load_tasks(spec, n, ctx.seed, "test") for spec in stage_sources(recipe, "rl_eval")]
    tasks = [t for group in groups for t in group]
    first_two = [j < 2 for group in groups for j in range(len(group))]
    comps, prompts, fields = sample_groups(model, tokenizer, tasks, cfg, 1, seed=ctx.seed + 7, search=search)
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


def equal_compute_control(policy_path, recipe, wall_s, reference, rm_fn, ctx, search=None) -> dict[str, float]:
    """The SFT checkpoint trained further with SFT for RL's wall time, evaluated like RL."""
    ctx.log(f"equal-compute control: SFT from {policy_path} for {wall_s:.0f}s (RL's training wall time)")
    model, tokenizer, info = continue_sft(policy_path, recipe, wall_s, ctx)
    out = evaluate(model, reference, tokenizer, recipe, rm_fn, ctx, "control", search)
    metrics = {f"control/{k}": v for k, v in out.items()}
    metrics.update({f"control/{k}": float(v) for k, v in info.items()})
    return metrics
