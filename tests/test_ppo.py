"""PPO: the value model reads the RM at every position, one PPO step moves policy and value model,
and the rl stage with algorithm=ppo runs end to end with the monitor printing gold beside the RM."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture()
def rm_dir(tiny_model_cfg, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from stages.lm.model import build_config
    config = build_config(tiny_model_cfg, tiny_tokenizer)
    config.num_labels = 1
    torch.manual_seed(3)
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.save_pretrained(tmp_path / "rm")
    tiny_tokenizer.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_value_model_is_the_rm_at_every_prefix(rm_dir, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from stages.policy_gradient.ppo import load_value_model
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    vm = load_value_model(str(rm_dir), tiny_tokenizer, "cpu").eval()
    ids = torch.tensor([[5, 17, 33, 40, 41, 60]])
    with torch.no_grad():
        values = vm(ids, torch.ones_like(ids))                        # (1, 6)
        for t in range(1, 6):   # value before token t = the RM's score of the prefix ids[:, :t]
            assert float(values[0, t]) == pytest.approx(float(rm(input_ids=ids[:, :t]).logits[0, 0]), abs=1e-5)


def test_value_model_refuses_another_tokenizer(rm_dir):
    from pipeline.errors import UserError
    from stages.lm.bpe import train_bpe
    from stages.policy_gradient.ppo import load_value_model
    other = train_bpe(["completely different text 123"] * 30, vocab_size=300)
    with pytest.raises(UserError, match="another tokenizer"):
        load_value_model(str(rm_dir), other, "cpu")


def test_ppo_stage_end_to_end(tiny_model, tiny_tokenizer, rm_dir, tmp_path):
    from pipeline.context import StageContext
    from pipeline.schema import Recipe
    from pipeline.tracking import Tracker
    from stages import rl
    from stages.lm.model import load_causal_lm, save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    recipe = Recipe(name="t", rl=dict(algorithm="ppo", max_steps=3, prompts_per_step=2, num_generations=2,
                                      max_new_tokens=6, eval_samples=1, families=["arithmetic"], control=False,
                                      micro_batch_size=2, beta=0.05, adaptive_kl_target=1.0, ptx_coef=0.1,
                                      monitor_window=2, optim={"lr": 1e-2}),
                    eval={"max_prompts_per_family": 2, "max_new_tokens": 6})
    out = tmp_path / "rl.tmp"
    ctx = StageContext(stage="rl", out_dir=out, run_dir=tmp_path, seed=0,
                       tracker=Tracker("rl", out, tmp_path, "t", {}, None, echo=False))
    metrics = rl.run(recipe, {"policy": str(tmp_path / "sft"), "reward_model": str(rm_dir)}, ctx)
    for key in ("eval/rm_reward", "before/eval/rm_reward", "eval/kl", "train/vf_loss", "train/pg_loss",
                "train/ptx_loss", "train/beta", "reward/rm", "monitor/gold", "monitor/proxy", "monitor/kl"):
        assert key in metrics, key
    assert metrics["train/beta"] != pytest.approx(0.05)       # the adaptive controller moved beta
    model, _ = load_causal_lm(out)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), tiny_model.parameters()))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "train/vf_loss" in s] == [1, 2, 3]
