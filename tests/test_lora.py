"""LoRA in every trainable stage after pretraining (sft, rm, rl; dpo in tests/test_dpo.py): only the
adapters train (and the RM's new score head), and the stage saves a plain HF dir that from_pretrained
loads, its embeddings and norms bit for bit the start model's."""
from __future__ import annotations

import json

import torch

from pipeline.context import StageContext, seed_everything
from pipeline.schema import Recipe
from pipeline.tracking import Tracker
from stages.lm.model import save_model

EVAL = {"max_prompts_per_family": 2, "max_new_tokens": 6}


def _ctx(tmp_path, stage):
    out = tmp_path / f"{stage}.tmp"
    return StageContext(stage, out, tmp_path, 0, Tracker(stage, out, tmp_path, "t", {}, None, echo=False))


def _only_adapters_trained(saved, start) -> None:
    before = dict(start.named_parameters())
    names = [n for n, _ in saved.named_parameters()]
    assert not any("lora" in n or "base_layer" in n or "modules_to_save" in n for n in names), names
    changed = {n for n, p in saved.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any("proj" in n for n in changed)                       # the adapters were folded into the linears
    assert not any("embed" in n or "norm" in n for n in changed), changed


def test_sft_lora_trains_only_adapters(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from stages import sft
    save_model(tiny_model, tiny_tokenizer, tmp_path / "start")
    recipe = Recipe.model_validate({"name": "t", "eval": EVAL, "sft": {
        "max_steps": 3, "micro_batch_size": 4, "builtin_train_per_family": 4, "builtin_test_per_family": 2,
        "families": ["arithmetic"], "eval_max_new_tokens": 6, "eval_base": False, "lora": True, "lora_r": 4,
        "optim": {"lr": 1e-2, "warmup_steps": 0}}})
    ctx = _ctx(tmp_path, "sft")
    sft.run(recipe, {"model": str(tmp_path / "start")}, ctx)
    _only_adapters_trained(AutoModelForCausalLM.from_pretrained(ctx.out_dir), tiny_model)


def test_rm_lora_trains_adapters_and_the_score_head(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from pipeline.schema import RMStage
    from stages.lm.finetune import add_lora
    from stages.reward_model import run
    from stages.rm.data import load_reward_model
    from tests.test_reward_model import _human_log
    save_model(tiny_model, tiny_tokenizer, tmp_path / "start")
    rm, _ = load_reward_model(str(tmp_path / "start"), "cpu")
    peft = add_lora(rm, RMStage(lora=True, lora_r=4), task_type="SEQ_CLS", modules_to_save=["score"])
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "score" in n for n in trainable) and any("score" in n for n in trainable)

    _human_log(tmp_path / "rankings.jsonl", 24)
    recipe = Recipe.model_validate({"name": "t", "eval": EVAL, "rm": {
        "rankers": ["human"], "rankings_file": str(tmp_path / "rankings.jsonl"), "epochs": 3, "prompts_per_batch": 4,
        "lora": True, "lora_r": 4, "optim": {"lr": 1e-2, "warmup_steps": 0}, "test_fraction": 0.25}})
    ctx = _ctx(tmp_path, "rm")
    seed_everything(0)
    metrics = run(recipe, {"model": str(tmp_path / "start")}, ctx)
    assert "eval/pairwise_acc" in metrics
    saved = AutoModelForSequenceClassification.from_pretrained(ctx.out_dir)
    assert saved.config.num_labels == 1 and saved.score.weight.shape[0] == 1
    _only_adapters_trained(saved, tiny_model)
    losses = [json.loads(x)["train/loss"] for x in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in x]
    assert losses[-1] < losses[0]


def test_rl_lora_trains_only_adapters(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    from stages import rl
    save_model(tiny_model, tiny_tokenizer, tmp_path / "start")
    (tmp_path / "len_reward.py").write_text("def score(prompts, completions, **kw):\n"
                                            "    return [len(c) / 10 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a reward that varies, so GRPO has a gradient
    recipe = Recipe.model_validate({"name": "t", "eval": EVAL, "rl": {
        "max_steps": 2, "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 6, "eval_samples": 1,
        "families": ["arithmetic"], "readiness_min_signal": 0.0, "control": False, "micro_batch_size": 4,
        "rewards": {"len_reward:score": 1.0}, "lora": True, "lora_r": 4, "optim": {"lr": 1e-2}}})
    ctx = _ctx(tmp_path, "rl")
    seed_everything(0)
    metrics = rl.run(recipe, {"policy": str(tmp_path / "start")}, ctx)
    assert metrics["train/steps"] == 2
    _only_adapters_trained(AutoModelForCausalLM.from_pretrained(ctx.out_dir), tiny_model)
