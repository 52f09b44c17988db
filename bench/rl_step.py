"""GRPO step time: our loop (stages/policy_gradient/grpo.py) vs TRL's GRPOTrainer, same model, G, batch and
lengths, one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rl_step.py                    # a fresh tiny Llama
    OMP_NUM_THREADS=1 .venv/bin/python bench/rl_step.py --model runs/tiny/sft --steps 6

Both sides start from the same weights, sample `--prompts` x `--G` completions of arithmetic prompts
at temperature 1 with at most `--max-new-tokens` new tokens, score them with the same verifier reward,
and take one AdamW step (lr 1e-4, beta 0, token-level loss: TRL's "dapo", our "token"). The first step
of each side is warm-up and not timed. A step is everything from sampling to the optimizer step.
Completion lengths differ between the two runs (they sample independently), so the mean length of
each is printed beside its time. TRL runs without our calculator tool (it cannot parse <|calc|>);
ours runs with it, as the stage does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from pipeline.schema import Model, RLStage
from reward.combine import RewardMix
from reward.verifiers import verifier_reward
from stages.data.chat import render_text
from stages.data.tasks import FAMILIES, make_tasks
from stages.lm.bpe import train_bpe
from stages.lm.model import build_model, load_causal_lm, save_model
from stages.policy_gradient.grpo import grpo_step

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_tiny(out_dir: Path) -> str:
    """A fresh 4x128 Llama with a 1024-token BPE trained on the task texts (stands in for an SFT model)."""

    texts = [m["content"] for f in FAMILIES for t in make_tasks(f, 300, 0, "train") for m in t.messages]
    tok = train_bpe(texts, vocab_size=1024)
    torch.manual_seed(0)
    save_model(build_model(Model(n_layer=4, n_embd=128, n_head=4, seq_len=256), tok), tok, out_dir)
    return str(out_dir)


def run_ours(model_dir: str, tasks, args) -> tuple[list[float], list[float]]:
    import random


    cfg = RLStage(num_generations=args.G, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                  temperature=1.0, beta=0.0, loss_type="token", micro_batch_size=args.prompts * args.G)
    accelerator = Accelerator(cpu=True)
    model, tok = load_causal_lm(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    mix = RewardMix({"verifier": 1.0})
    times, lengths, rng = [], [], random.Random(0)
    for step in range(args.steps + 1):
        batch = tasks[step * args.prompts:(step + 1) * args.prompts]
        t0 = time.perf_counter()
        metrics, _ = grpo_step(model, None, tok, batch, mix, cfg, accelerator, optimizer,
                               micro=cfg.micro_batch_size, seed=rng.randrange(2**31))
        if step:  # step 0 is warm-up
            times.append(time.perf_counter() - t0)
            lengths.append(metrics["train/completion_len"])
    return times, lengths


def run_trl(model_dir: str, tasks, args, work: Path) -> tuple[list[float], list[float]]:
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": render_text(tok, t.prompt_messages(), add_generation_prompt=True),
                               "answers": t.answer} for t in tasks])

    def reward(prompts, completions, answers, **_):
        return verifier_reward(prompts, completions, answers=answers)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.lengths, self.t0 = [], [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.G,
                        num_generations=args.G, max_completion_length=args.max_new_tokens, temperature=1.0,
                        learning_rate=1e-4, weight_decay=0.0, beta=0.0, loss_type="dapo", max_steps=args.steps + 1,
                        logging_steps=1, report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
                        save_strategy="no", disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    return timer.times[1:], timer.lengths[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model dir (default: a fresh tiny Llama)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side (after one warm-up)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--G", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model or build_tiny(work / "model")
        tasks = make_tasks("arithmetic", (args.steps + 1) * args.prompts, 0, "train")
        ours, ours_len = run_ours(model_dir, tasks, args)
        trl, trl_len = run_trl(model_dir, tasks, args, work)
    o, t = statistics.median(ours), statistics.median(trl)
    print(f"model {args.model or 'fresh tiny Llama 4x128'}, {args.prompts} prompts x G={args.G}, "
          f"<= {args.max_new_tokens} new tokens, {args.steps} timed steps, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'':<8} {'s/step (median)':>16} {'mean completion tokens':>24}")
    print(f"{'ours':<8} {o:>16.3f} {statistics.mean(ours_len):>24.1f}")
    print(f"{'TRL':<8} {t:>16.3f} {statistics.mean(trl_len) if trl_len else float('nan'):>24.1f}")
    print(f"TRL / ours step time: {t / o:.2f}x")


if __name__ == "__main__":
    main()
