"""The `rl` stage: GRPO on verifiable rewards or PPO against the reward model, evaluated before and after.

    lifecycle run recipes/tiny.yaml --stages rl                       # GRPO (rl.algorithm: grpo)
    lifecycle run recipes/tiny.yaml --stages rl rl.algorithm=ppo      # PPO with the trained RM

Sections of run(), top to bottom:
1. load the policy (inputs["policy"]: the SFT dir or rl.from) and a frozen copy as the reference;
2. the reward mix (reward/combine.py): rl.rewards, default {verifier: 1} for GRPO, {rm: 1} for PPO;
3. held-out eval before RL (eval.tasks, else every built-in family and rl's own task sources), and (GRPO)
   the readiness check (stages/policy_gradient/evaluate.py);
4. train: stages/policy_gradient/grpo.py or stages/policy_gradient/ppo.py, both `train(RLRun)` (stages/policy_gradient/rollout.py), with
   the reward-hacking monitor (stages/policy_gradient/monitor.py) when an RM is a reward;
5. save the HF dir (with the policy dir's system prompt and search index), eval after, and the gain per family;
6. the equal-compute control (rl.control): the same SFT checkpoint trained further with SFT for the
   same wall time, evaluated the same way, so the report shows what RL bought beyond more SFT.

Resume: a checkpoint every `rl.checkpoint_every` steps holds the policy (and PPO's value model), their
optimizers, the scheduler, the RNG states, the prompt cursor's RNG, the monitor, the counters and the eval
before training (not recomputed); a rerun after a kill continues from it. LoRA (`rl.lora`): adapters on
the policy, merged into a plain HF dir at the end; rollouts then use HF generate.
The search tool: when the policy dir holds an index (<policy>/search/, stages/tools/search.py), every
rollout and eval answers the policy's <|search|> calls from it; without one they get an error line.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from accelerate import Accelerator

from pipeline.distributed import configure_engine, save_model_gathered
from reward.combine import RewardMix
from reward.model_scorer import load_reward_fn
from stages.data.tasks import FAMILIES
from stages.data.tasks.sources import load_tasks, rl_train_count
from stages.lm.checkpoints import Checkpoints
from stages.lm.finetune import add_lora, merge_lora
from stages.lm.model import load_causal_lm, mask_padded_vocab, save_model
from stages.lm.optim import make_optimizer, make_scheduler
from stages.policy_gradient import grpo, ppo
from stages.policy_gradient.evaluate import equal_compute_control, evaluate, gains, readiness, summary_line
from stages.policy_gradient.monitor import HackingMonitor
from stages.policy_gradient.rollout import RLRun
from stages.policy_gradient.vllm_sampler import make_sampler
from stages.tools.search import copy_search_index, load_search_index

DEFAULT_REWARDS = {"grpo": {"verifier": 1.0}, "ppo": {"rm": 1.0}}
TRAIN = {"grpo": grpo.train, "ppo": ppo.train}


def run(recipe, inputs, ctx) -> dict[str, float]:
    cfg = recipe.rl
    families = list(cfg.tasks) if cfg.tasks is not None else list(cfg.families) or list(FAMILIES)  # task sources
    accelerator = Accelerator()
    device = accelerator.device
    policy, tokenizer = load_causal_lm(inputs["policy"], device=str(device))
    mask_padded_vocab(policy, len(tokenizer))  # log-probs over the tokens the sampler can draw
    reference = frozen_copy(policy)
    rewards = cfg.rewards or DEFAULT_REWARDS[cfg.algorithm]
    mix = RewardMix(rewards, inputs.get("reward_model"), device=str(device))
    rm_fn = mix.parts.get("rm") or _load_rm(inputs.get("reward_model"), device)
    n_train = rl_train_count(cfg, len(families))
    train_tasks = [t for fam in families for t in load_tasks(fam, n_train, ctx.seed, "train")]
    search = load_search_index(inputs["policy"])
    ctx.log(f"{cfg.algorithm}: policy {inputs['policy']}, rewards {rewards}, train families {families}, "
            f"{len(train_tasks)} train prompts, search {f'{len(search)} passages' if search is not None else 'none'}")

    checkpoints = Checkpoints(ctx.out_dir / "checkpoints", accelerator, cfg.checkpoint_every)
    metrics = checkpoints.loop_state().get("before")  # a resumed run keeps its eval before training
    if metrics is None:
        before = evaluate(policy, reference, tokenizer, recipe, rm_fn, ctx, "before", search)
        metrics = {f"before/{k}": v for k, v in before.items()}
    sampler = make_sampler(cfg, inputs["policy"], tokenizer, accelerator)  # None: HF generate
    ctx.log(f"rollouts: {'vLLM (colocated)' if sampler else 'HF generate'} | {accelerator.num_processes} process(es) x "
            f"{cfg.prompts_per_step} prompts x {cfg.num_generations} samples per step")
    if cfg.algorithm == "grpo" and not checkpoints.loop_state():
        metrics.update(readiness(policy, tokenizer, train_tasks, mix, cfg, ctx, sampler, search))

    if cfg.lora:  # adapters on the policy only; the reference stays the frozen start model
        policy = add_lora(policy, cfg)
    optimizer = make_optimizer(policy, cfg.optim, str(device))
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    configure_engine(accelerator, micro_batch_size=cfg.micro_batch_size, grad_clip=cfg.optim.grad_clip)
    monitor = HackingMonitor(cfg.monitor_window, cfg.stop_on_hacking, warn=ctx.log) if rm_fn else None
    state = RLRun(policy, reference, tokenizer, train_tasks, mix, cfg, ctx, accelerator, optimizer, scheduler,
                  monitor, sampler, value_model_dir=inputs.get("reward_model"), ptx_max_length=recipe.sft.max_length,
                  checkpoints=checkpoints, extra={"before": dict(metrics)}, search=search)
    train_metrics = TRAIN[cfg.algorithm](state)
    policy = state.policy
    metrics.update({k: v for k, v in train_metrics.items() if k.startswith(("train/", "reward/", "monitor/"))})
    if cfg.lora:  # a plain HF dir: the adapters folded into the weights
        policy = merge_lora(accelerator.unwrap_model(policy))
        if accelerator.is_main_process:
            save_model(policy, tokenizer, ctx.out_dir)
        accelerator.wait_for_everyone()
    else:
        save_model_gathered(accelerator, policy, tokenizer, ctx.out_dir)
    system_prompt = Path(inputs["policy"]) / "system_prompt.txt"   # what `lifecycle chat` uses with the SFT model
    if accelerator.is_main_process and system_prompt.is_file():
        shutil.copy(system_prompt, ctx.out_dir / "system_prompt.txt")
    if accelerator.is_main_process:
        copy_search_index(inputs["policy"], ctx.out_dir)

    policy = accelerator.unwrap_model(policy)
    after = evaluate(policy, reference, tokenizer, recipe, rm_fn, ctx, "after", search)
    metrics.update(after)
    metrics.update(gains(metrics, "before/eval/", "eval/", "gain"))
    if cfg.control and accelerator.is_main_process:
        metrics.update(equal_compute_control(inputs["policy"], recipe, metrics["train/wall_s"], reference,
                                             rm_fn, ctx, search))
        metrics.update(gains(metrics, "before/eval/", "control/eval/", "control_gain"))
    ctx.log(summary_line(metrics))
    checkpoints.finish(cfg.keep_checkpoints)
    return metrics


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _load_rm(path, device):
    return load_reward_fn(path, device=str(device)) if path else None
