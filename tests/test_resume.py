"""Every training stage resumes exactly: run it in a subprocess, SIGKILL it once a checkpoint exists (at
whatever step it has reached), rerun it into the same dir, and compare with an uninterrupted run of the
same seed: the same returned metrics (wall-clock ones aside) and the same logged loss at every step."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.resume_driver import call

ROOT = Path(__file__).resolve().parent.parent
CLOCK = ("wall_s", "tokens_per_s", "gen_frac")  # metrics that measure time, not the computation
EVAL = {"max_prompts_per_family": 2, "max_new_tokens": 6}


def _specs(tmp_path: Path, tiny_model, tiny_tokenizer) -> dict[str, dict]:
    """One small, checkpoint-every-2-steps configuration per stage."""
    from transformers import AutoModelForSequenceClassification

    from stages.lm.model import save_model
    from tests.test_reward_model import _human_log
    start = tmp_path / "start"
    save_model(tiny_model, tiny_tokenizer, start)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {i}", "chosen": f"Answer: {i}", "rejected": "no no"}) + "\n"
                             for i in range(12)))
    _human_log(tmp_path / "rankings.jsonl", 24)
    (tmp_path / "len_reward.py").write_text("def score(prompts, completions, **kw):\n"
                                            "    return [len(c) / 10 for c in completions]\n")
    rm = tmp_path / "rm"   # PPO's reward model: a sequence classifier on the start model, its head random
    config = copy.deepcopy(tiny_model.config)
    config.num_labels = 1
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(rm)
    tiny_tokenizer.save_pretrained(rm)
    rl = dict(max_steps=6, prompts_per_step=2, num_generations=2, max_new_tokens=6, eval_samples=1,
              families=["arithmetic"], readiness_min_signal=0.0, control=False, micro_batch_size=4,
              checkpoint_every=2, optim={"lr": 1e-2})
    return {
        "sft": dict(entry="stages.sft:run", reads=["seed", "sft", "eval"], inputs={"model": str(start)}, sft={
            "from": str(start), "max_steps": 6, "micro_batch_size": 4, "builtin_train_per_family": 6,
            "builtin_test_per_family": 2, "eval_max_new_tokens": 6, "max_length": 200, "families": ["arithmetic"],
            "optim": {"lr": 1e-2, "warmup_steps": 0}, "multi_turn_share": 0.0, "checkpoint_every": 2}),
        "dpo": dict(entry="stages.dpo:run", reads=["seed", "dpo", "eval"], inputs={"model": str(start)}, dpo={
            "num_prompts": 8, "k": 2, "max_new_tokens": 6, "families": ["arithmetic"], "tie_break": "shorter",
            "pairs_datasets": [str(pairs)], "prompts_per_batch": 2, "epochs": 1, "test_fraction": 0.3,
            "optim": {"lr": 3e-3, "warmup_steps": 0}, "checkpoint_every": 2}),
        "rm": dict(entry="stages.reward_model:run", reads=["seed", "rm", "eval"], inputs={"model": str(start)}, rm={
            "rankers": ["human"], "rankings_file": str(tmp_path / "rankings.jsonl"), "pairs_datasets": [str(pairs)],
            "epochs": 2, "prompts_per_batch": 4, "optim": {"lr": 3e-3, "warmup_steps": 2}, "test_fraction": 0.25,
            "checkpoint_every": 2}),
        "grpo": dict(entry="stages.rl:run", reads=["seed", "rl", "eval", "sft"], inputs={"policy": str(start)},
                     rl={**rl, "beta": 0.1, "rewards": {"verifier": 1.0, "len_reward:score": 0.5}}),
        "ppo": dict(entry="stages.rl:run", reads=["seed", "rl", "eval", "sft"],
                    inputs={"policy": str(start), "reward_model": str(rm)},
                    rl={**rl, "algorithm": "ppo", "beta": 0.05, "adaptive_kl_target": 1.0, "ptx_coef": 0.1,
                        "monitor_window": 2}),
    }


def _spec(tmp_path: Path, name: str, config: dict, where: str) -> dict:
    section = {k: v for k, v in config.items() if k not in ("entry", "reads", "inputs")}
    stage = config["entry"].split(":")[0].split(".")[-1].replace("reward_model", "rm")
    return {"entry": config["entry"], "stage": stage, "reads": config["reads"], "inputs": config["inputs"],
            "recipe": {"name": "t", "seed": 3, "eval": EVAL, **section},
            "out_dir": str(tmp_path / where / f"{stage}.tmp"), "run_dir": str(tmp_path / where),
            "threads": torch.get_num_threads(), "sys_path": [str(tmp_path)]}


def _kill_after_first_checkpoint(spec: dict, tmp_path: Path) -> None:
    path = tmp_path / "killed_spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.resume_driver", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = Path(spec["out_dir"]) / "checkpoints"
    deadline = time.time() + 600
    while not any(p.name.startswith("step_") and not p.name.endswith(".tmp") for p in
                  (ckpts.iterdir() if ckpts.is_dir() else [])):
        assert proc.poll() is None, "run ended before its first checkpoint:\n" + proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (Path(spec["out_dir"]) / "result.json").exists()


def _losses(out_dir: str) -> dict[int, float]:
    out = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec and rec.get("step") is not None:
            out[rec["step"]] = rec["train/loss"]  # a rerun's later record of a step wins
    return out


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("name", ["sft", "dpo", "rm", "grpo", "ppo"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(name, tmp_path, tiny_model, tiny_tokenizer):
    config = _specs(tmp_path, tiny_model, tiny_tokenizer)[name]
    killed = _spec(tmp_path, name, config, "killed")
    _kill_after_first_checkpoint(killed, tmp_path)
    resumed = call(killed)                                  # the rerun, into the killed run's .tmp dir
    reference = _spec(tmp_path, name, config, "full")
    full = call(reference)                                  # uninterrupted, same seed
    assert "resumed from" in (Path(killed["out_dir"]) / "log.txt").read_text()
    assert not (Path(killed["out_dir"]) / "checkpoints").exists()
    keys = {k for k in full if not k.endswith(CLOCK)}
    assert keys == {k for k in resumed if not k.endswith(CLOCK)}
    differ = {k: (resumed[k], full[k]) for k in keys if not _same(resumed[k], full[k])}
    assert not differ
    assert _losses(killed["out_dir"]) == _losses(reference["out_dir"])
