"""`lifecycle eval`: suite detection, the base/chat/benchmark suites on a tiny checkpoint, the stage entry."""
from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import pytest

from pipeline.commands import eval as E
from pipeline.errors import UserError

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def ckpt(tmp_path, tiny_model, tiny_tokenizer):
    from stages.lm.model import save_model
    path = tmp_path / "ckpt"
    save_model(tiny_model, tiny_tokenizer, path)
    return path


@pytest.fixture()
def recipe_path(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}: and God said {i * 7} times, let there be light."})
                            + "\n" for i in range(40)))
    path = tmp_path / "r.yaml"
    path.write_text(f"""name: ev
output_dir: {tmp_path / 'runs'}
tracking: {{wandb: false}}
data: {{source: local, paths: ["{docs}"], val_fraction: 0.3}}
pretrain: {{eval_tokens: 2000}}
sft: {{families: [arithmetic, decimal_compare]}}
eval: {{max_prompts_per_family: 3, max_new_tokens: 8, samples: 2, benchmark_max_new_tokens: 6}}
""")
    return path


def _args(checkpoint, recipe, suite="auto", **kw):
    base = dict(checkpoint=str(checkpoint), suite=suite, recipe=recipe, limit=None, data_file=None, reference=None,
                reward_model=None, out=None)
    return Namespace(**(base | kw))


def test_detect_suite_from_manifest_or_architecture(tmp_path, ckpt):
    assert E.detect_suite(ckpt) == "base"  # a causal LM without a manifest
    for stage, suite in (("pretrain", "base"), ("sft", "chat"), ("rm", "rm"), ("rl", "rl")):
        (ckpt / "manifest.json").write_text(json.dumps({"stage": stage}))
        assert E.detect_suite(ckpt) == suite
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    assert E.detect_suite(rm) == "rm"


def test_base_suite_bits_per_byte_and_samples(ckpt, recipe_path, tmp_path):
    out = tmp_path / "m.json"
    assert E.main(_args(ckpt, recipe_path, out=str(out))) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"eval/val_loss", "eval/val_bpb"}
    # an untrained model is near uniform over the vocab: loss ~ ln(vocab), and bpb is positive and finite
    assert metrics["eval/val_loss"] == pytest.approx(math.log(400), rel=0.1)
    assert 0 < metrics["eval/val_bpb"] < 20
    run = tmp_path / "runs" / "ev" / "eval" / "ckpt-base"
    samples = [json.loads(line) for line in (run / "samples_base.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["prompt"] and isinstance(s["continuation"], str) for s in samples)
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["eval/val_bpb"] == metrics["eval/val_bpb"]


def test_chat_suite_per_family_metrics_and_table(ckpt, recipe_path, tmp_path, capsys):
    assert E.main(_args(ckpt, recipe_path, suite="chat", limit=2)) == 0
    printed = capsys.readouterr().out
    for fam in ("arithmetic", "decimal_compare"):
        assert f"eval/acc/{fam}" in printed and f"eval/format/{fam}" in printed
    rows = (tmp_path / "runs" / "ev" / "eval" / "ckpt-chat" / "samples_chat.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 2 and {"family", "prompt", "completion", "answer"} <= set(json.loads(rows[0]))


def test_benchmark_suite_from_a_local_file(ckpt, recipe_path, tmp_path):
    out = tmp_path / "b.json"
    args = _args(ckpt, recipe_path, suite="arc_easy", data_file=str(DATA / "arc.jsonl"), out=str(out))
    assert E.main(args) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["eval/arc_easy/n"] == 3 and 0 <= metrics["eval/arc_easy/acc"] <= 1


def test_gsm8k_generation_path(ckpt, recipe_path, tmp_path):
    out = tmp_path / "g.json"
    args = _args(ckpt, recipe_path, suite="gsm8k", data_file=str(DATA / "gsm8k.jsonl"), limit=2, out=str(out))
    assert E.main(args) == 0
    assert json.loads(out.read_text())["metrics"]["eval/gsm8k/n"] == 2
    rows = (tmp_path / "runs" / "ev" / "eval" / "ckpt-gsm8k" / "samples_gsm8k.jsonl").read_text().splitlines()
    assert [json.loads(r)["answer"] for r in rows] == ["1234", "7"]


def test_bad_input(ckpt, recipe_path, tmp_path):
    with pytest.raises(UserError, match="unknown"):
        E.main(_args(ckpt, recipe_path, suite="nope"))
    with pytest.raises(UserError, match="no checkpoint"):
        E.main(_args(tmp_path / "a" / "b" / "c", recipe_path))
    with pytest.raises(UserError, match="reference policy"):
        E.main(_args(ckpt, recipe_path, suite="rl"))
    with pytest.raises(UserError, match="--limit"):
        E.main(_args(ckpt, recipe_path, limit=0))


def test_stage_entry_through_call_stage(ckpt, recipe_path, tmp_path):
    from pipeline.launch import call_stage
    from pipeline.recipe import load_recipe
    recipe = load_recipe(recipe_path, ["eval.samples=1"])
    out = tmp_path / "stage_out"
    result = call_stage(recipe, "pipeline.commands.eval:run", "eval", {"model": str(ckpt)}, out, tmp_path / "runs" / "ev")
    assert set(result["metrics"]) == {"eval/val_loss", "eval/val_bpb"}
    assert (out / "samples_base.jsonl").read_text().count("\n") == 1


def test_rl_suite_against_itself_has_zero_kl(ckpt, recipe_path, tmp_path):
    from stages.data.tasks import FAMILIES
    out = tmp_path / "rl.json"
    args = _args(ckpt, recipe_path, suite="rl", reference=str(ckpt), out=str(out))
    assert E.main(args) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["eval/kl"] == pytest.approx(0.0, abs=1e-5)  # the policy is its own reference
    assert {f"eval/acc/{f}" for f in FAMILIES} <= set(metrics) and metrics["eval/length"] > 0


def test_rm_suite_on_held_out_ranked_rollouts(tmp_path, recipe_path, tiny_model, tiny_tokenizer):
    from stages.data.special_tokens import END
    from stages.data.tasks import make_tasks
    from stages.lm.model import save_model
    from stages.rm.data import is_test, load_reward_model
    lm_dir, rm_dir = tmp_path / "lm", tmp_path / "rm"
    save_model(tiny_model, tiny_tokenizer, lm_dir)
    rm, tok = load_reward_model(str(lm_dir), "cpu")
    save_model(rm, tok, rm_dir)
    run_dir = tmp_path / "runs" / "ev"
    run_dir.mkdir(parents=True)
    records = []
    for i, task in enumerate(make_tasks("arithmetic", 12, 0, "test")):
        reference = task.messages[-1]["content"] + END
        texts = [reference, f"I think.\nAnswer: {task.answer}1{END}", "no idea"]  # tiers 3, 1, 0: 3 pairs
        records.append({"id": f"p{i}", "family": task.family, "prompt_messages": task.prompt_messages(),
                        "answer": task.answer, "meta": task.meta, "reference": reference,
                        "completions": [{"text": t} for t in texts]})
    (run_dir / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "rm.json"
    assert E.main(_args(rm_dir, recipe_path, out=str(out))) == 0  # suite detected from the architecture
    metrics = json.loads(out.read_text())["metrics"]
    n_test = sum(is_test(json.dumps(r["prompt_messages"], sort_keys=True), 0.2) for r in records)  # split by prompt text
    assert metrics["eval/n_prompts"] == n_test and metrics["eval/n_pairs"] == 3 * n_test
    assert 0 <= metrics["eval/pairwise_acc"] <= 1 and 0 <= metrics["eval/top1_acc"] <= 1


def test_benchmarks_suite_runs_the_recipes_list(ckpt, recipe_path, tmp_path):
    out = tmp_path / "all.json"
    overrides = recipe_path.read_text().replace(
        "eval: {", f'eval: {{benchmarks: [mmlu, hellaswag], benchmark_files: {{mmlu: "{DATA / "mmlu.parquet"}", '
                   f'hellaswag: "{DATA / "hellaswag.jsonl"}"}}, ')
    recipe_path.write_text(overrides)
    assert E.main(_args(ckpt, recipe_path, suite="benchmarks", out=str(out))) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["eval/mmlu/n"] == 3 and metrics["eval/hellaswag/n"] == 2 and "eval/hellaswag/acc_norm" in metrics
    recipe_path.write_text(recipe_path.read_text().replace("[mmlu, hellaswag]", "[mmlu, squad]"))
    with pytest.raises(UserError, match="unknown benchmark 'squad'"):
        E.main(_args(ckpt, recipe_path, suite="benchmarks"))
