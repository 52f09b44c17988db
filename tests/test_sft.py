"""SFT stage: packing == padding, accumulation == one big batch, LoRA merge exact, the stage end to end."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.schema import Recipe, SFTStage
from stages.data.chat import render_training
from stages.data.sft_examples import pack
from stages.data.tasks import make_tasks
from stages.lm.finetune import StepSchedule, add_lora, collate, merge_lora, token_loss_sum, train_step


def _examples(tok, n=6):
    tasks = make_tasks("arithmetic", n // 2, 0, "train") + make_tasks("identity", n - n // 2, 0, "train")
    return [render_training(tok, t.messages, 1000) for t in tasks]


def test_packed_rows_compute_the_same_loss_as_padded_rows(tiny_model, tiny_tokenizer):
    examples = _examples(tiny_tokenizer, 4)
    pad = tiny_tokenizer.pad_token_id
    padded = collate([(i, l, None) for i, l in examples], pad, "cpu")
    packed_rows = pack(examples, max_length=sum(len(i) for i, _ in examples) + 5, pad_id=pad)
    assert len(packed_rows) == 1
    packed = collate(packed_rows, pad, "cpu")
    assert "attention_mask" not in packed and packed["position_ids"][0, len(examples[0][0])] == 0
    with torch.no_grad():
        a = token_loss_sum(tiny_model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits,
                           padded["labels"])
        b = token_loss_sum(tiny_model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                      use_cache=False).logits,
                           packed["labels"])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_pack_splits_rows_at_max_length(tiny_tokenizer):
    examples = _examples(tiny_tokenizer, 6)
    longest = max(len(i) for i, _ in examples)
    rows = pack(examples, longest, tiny_tokenizer.pad_token_id)
    assert all(len(r[0]) == len(r[1]) == len(r[2]) == longest for r in rows)
    kept = sorted(t for r in rows for t in r[1] if t != -100)
    assert kept == sorted(t for _, l in examples for t in l if t != -100)


def _one_step(model, rows, micro, accum, tokenizer):
    from accelerate import Accelerator
    cfg = SFTStage(micro_batch_size=micro, grad_accum=accum, optim={"grad_clip": 0})
    accelerator = Accelerator(cpu=True)
    # plain SGD with lr 1: the update is minus the gradient (Adam's first step would hide its scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss, _ = train_step(model, optimizer, scheduler, accelerator, rows, cfg, tokenizer.pad_token_id)
    return loss, [p.detach().clone() for p in model.parameters()]


def test_accumulated_micro_batches_equal_one_big_batch(tiny_model_cfg, tiny_tokenizer):
    from stages.lm.model import build_model
    rows = [(i, l, None) for i, l in _examples(tiny_tokenizer, 4)]
    results = []
    for micro, accum in ((4, 1), (1, 4), (2, 2)):
        torch.manual_seed(0)
        results.append(_one_step(build_model(tiny_model_cfg, tiny_tokenizer), rows, micro, accum, tiny_tokenizer))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        for p, q in zip(params, results[0][1]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_step_schedule_covers_each_epoch_once():
    schedule = StepSchedule(10, 4, seed=0)
    first = [i for s in range(5) for i in schedule.rows(s)]  # 20 rows = 2 epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert first[:10] != first[10:]
    assert StepSchedule(10, 4, seed=0).rows(3) == schedule.rows(3)


def test_builtin_conversations_merge_into_multi_turn_chats():
    from stages.data.sft_examples import builtin_conversations
    cfg = SFTStage(builtin_train_per_family=20, multi_turn_share=1.0)
    convs = builtin_conversations(cfg, 0, ["arithmetic", "identity", "unknown"])
    pieces = [piece for where, _ in convs for piece in where.split("+")]
    assert sorted(pieces) == sorted(f"builtin:{f}:{i}" for f in ("arithmetic", "identity", "unknown") for i in range(20))
    multi = [m for _, m in convs if sum(t["role"] == "user" for t in m) == 2]
    assert len(multi) >= 15
    assert all(t["role"] != "system" for m in multi for t in m[1:])
    assert builtin_conversations(cfg, 0, ["arithmetic"]) == builtin_conversations(cfg, 0, ["arithmetic"])
    single = builtin_conversations(cfg.model_copy(update={"multi_turn_share": 0.0}), 0, ["arithmetic"])
    assert len(single) == 20


def test_lora_merged_model_matches_adapter_model(tiny_model, tiny_tokenizer):
    cfg = SFTStage(lora=True, lora_r=4, lora_alpha=8)
    model = add_lora(tiny_model, cfg)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters do something
            param.data.normal_(0, 0.1)
    ids = torch.tensor([tiny_tokenizer("In the beginning 123", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits
        merged = merge_lora(model)
        merged_logits = merged(input_ids=ids).logits
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        base_logits = merged.__class__(merged.config)(input_ids=ids).logits
    assert not torch.allclose(base_logits, merged_logits)
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-5, atol=1e-5)


def _run_stage(tmp_path, tiny_model, tiny_tokenizer, **sft):
    from pipeline.context import StageContext
    from pipeline.tracking import Tracker
    from stages import sft as sft_stage
    from stages.lm.model import save_model
    start = tmp_path / "start"
    save_model(tiny_model, tiny_tokenizer, start)
    recipe = Recipe.model_validate({"name": "t", "sft": {
        "from": str(start), "max_steps": 4, "micro_batch_size": 4, "builtin_train_per_family": 6,
        "builtin_test_per_family": 2, "eval_max_new_tokens": 6, "max_length": 200,
        "optim": {"lr": 1e-2, "warmup_steps": 0}, "multi_turn_share": 0.0, **sft}})
    out = tmp_path / "sft"
    tracker = Tracker("sft", out, tmp_path, "t", {}, None, echo=False)
    ctx = StageContext(stage="sft", out_dir=out, run_dir=tmp_path, seed=0, tracker=tracker)
    return sft_stage.run(recipe, {"model": str(start)}, ctx), out, start


@pytest.mark.parametrize("extra, kept", [({}, 36), ({"packing": True, "lora": True, "lora_r": 4,
                                                      "family_weights": {"arithmetic": 2, "unknown": 0}}, 36)])
def test_stage_end_to_end(tmp_path, tiny_model, tiny_tokenizer, extra, kept):
    from stages.lm.model import load_causal_lm
    metrics, out, start = _run_stage(tmp_path, tiny_model, tiny_tokenizer, **extra)
    for family in ("arithmetic", "calculator", "identity"):
        assert f"eval/acc/{family}" in metrics and f"base/acc/{family}" in metrics
    assert {"eval/format", "base/format", "eval/acc_no_tool/calculator", "train/loss"} <= metrics.keys()
    model, tok = load_causal_lm(out)
    before, _ = load_causal_lm(start)
    assert not any("lora" in n for n, _ in model.named_parameters())
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters())]
    assert any(changed)
    assert tok.chat_template and "generation" in tok.chat_template
    report = json.loads((out / "data_report.json").read_text())
    assert report["kept"] == kept and report["skipped"] == 0
    assert (out / "samples.jsonl").is_file() and (out / "system_prompt.txt").read_text().startswith("You are")


def test_stage_reports_over_long_rows(tmp_path, tiny_model, tiny_tokenizer):
    metrics, out, _ = _run_stage(tmp_path, tiny_model, tiny_tokenizer, max_length=100, families=["arithmetic", "spelling"],
                                 eval_base=False, max_steps=1)
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"].get("over-long", 0) > 0
    assert report["kept"] + report["skipped"] == 12
    assert report["first_skipped"][0]["where"].startswith("builtin:")
    assert not any(k.startswith("base/") for k in metrics)


def test_unknown_family_is_refused_when_the_recipe_loads(tmp_path):
    from pipeline.errors import UserError
    from pipeline.recipe import load_recipe
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nsft: {families: [poetry]}\n")
    with pytest.raises(UserError, match="sft.families: unknown family 'poetry'"):
        load_recipe(path)
    with pytest.raises(UserError, match="family_weights: 'poetry' is not the label"):
        load_recipe(path, ["sft.families=[]", "sft.family_weights={poetry: 2}"])
