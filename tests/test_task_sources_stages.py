"""The GPU recipe's chain on a CPU: recipes/gpt2-124m.yaml's sft, rm and rl stages run through the runner for a few
steps from a tiny local model, then its eval benchmarks; every hub id it names (GSM8K, SmolTalk, UltraFeedback,
ARC, MMLU, HellaSwag) is served by datasets.load_dataset from rows written here in that dataset's column layout,
so the hub code path itself runs. Also: a gym task source through rollouts and the reward model's rankings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.recipe import load_recipe
from pipeline.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hub_tables() -> dict:
    """(id, config, split) -> rows in the hub dataset's layout (dataset cards; /work/shared/STACK-NOTES.md)."""
    def gsm8k(start: int, n: int) -> list[dict]:
        return [{"question": f"A box has {a} eggs and {a + 2} more are added. How many eggs?",
                 "answer": f"{a} + {a + 2} = <<{a}+{a + 2}={2 * a + 2}>>{2 * a + 2} eggs.\n#### {2 * a + 2:,}"}
                for a in range(start, start + n)]
    chats = [{"messages": [{"role": "user", "content": f"Say hello {i} times."},
                           {"role": "assistant", "content": "Hello! " * (i + 1)}], "source": "everyday"}
             for i in range(6)]
    prefs = [{"prompt": f"Name a colour {i}.", "prompt_id": f"p{i}",
              "chosen": [{"role": "user", "content": f"Name a colour {i}."}, {"role": "assistant", "content": "Blue."}],
              "rejected": [{"role": "user", "content": f"Name a colour {i}."}, {"role": "assistant", "content": "Dog"}],
              "messages": [{"role": "user", "content": f"Name a colour {i}."}, {"role": "assistant", "content": "Blue."}],
              "score_chosen": 8.0, "score_rejected": 2.0} for i in range(4)]
    return {("openai/gsm8k", "main", "train"): gsm8k(0, 12), ("openai/gsm8k", "main", "test"): gsm8k(500, 4),
            ("HuggingFaceTB/smoltalk", "all", "train"): chats,
            ("HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs"): prefs,
            ("allenai/ai2_arc", "ARC-Easy", "test"): _rows(DATA / "arc.jsonl"),
            ("allenai/ai2_arc", "ARC-Challenge", "test"): _rows(DATA / "arc.jsonl"),
            ("cais/mmlu", "all", "test"): _rows(DATA / "mmlu.parquet"),
            ("Rowan/hellaswag", None, "validation"): _rows(DATA / "hellaswag.jsonl")}


@pytest.fixture()
def hub(monkeypatch):
    import datasets
    tables, calls = hub_tables(), []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if (path, name, split) not in tables:
            raise FileNotFoundError(f"no fixture for {path} {name} {split}")
        return datasets.Dataset.from_list(tables[(path, name, split)])
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.fixture()
def start_model(tmp_path, tiny_tokenizer):
    import torch

    from pipeline.schema import Model
    from stages.lm.model import build_model, save_model
    torch.manual_seed(0)
    model = build_model(Model(arch="llama", n_layer=2, n_embd=32, n_head=2, seq_len=512), tiny_tokenizer)
    save_model(model, tiny_tokenizer, tmp_path / "start")
    return tmp_path / "start"


SMALL = ["tracking.wandb=false", "distributed.mixed_precision='no'",
         "sft.max_steps=2", "sft.micro_batch_size=2", "sft.max_length=512", "sft.builtin_train_per_family=3",
         "sft.builtin_test_per_family=2", "sft.dataset_max_rows=6", "sft.eval_max_new_tokens=8", "sft.eval_base=false",
         "rm.num_prompts=8", "rm.k=2", "rm.max_new_tokens=8", "rm.max_length=256", "rm.epochs=1",
         "rm.prompts_per_batch=2", "rm.pairs_max_examples=4",
         "rl.max_steps=2", "rl.prompts_per_step=2", "rl.num_generations=2", "rl.max_new_tokens=8",
         "rl.readiness_min_signal=0", "rl.control=false", "rl.eval_samples=1", "rl.micro_batch_size=8",
         "eval.max_prompts_per_family=2", "eval.max_new_tokens=8", "eval.benchmark_limit=2",
         "eval.benchmark_max_new_tokens=8"]


def test_gpu_recipe_sft_rm_rl_and_eval_run_on_cpu_from_local_hub_layouts(tmp_path, hub, start_model):
    from pipeline import artifacts
    from pipeline.commands.eval import evaluate
    from pipeline.context import StageContext
    from pipeline.tracking import Tracker
    from stages.data.sft_examples import builtin_conversations
    from stages.data.sft_examples import train_families as check_families
    recipe_path = ROOT / "recipes" / "gpt2-124m.yaml"
    recipe = load_recipe(recipe_path, SMALL + [f"output_dir={tmp_path / 'runs'}", f"sft.from={start_model}"])
    runner = Runner(recipe, recipe_path)
    runner.run(["sft", "rm", "rl"])
    run_dir = tmp_path / "runs" / "gpt2-124m"
    sft, rm, rl = (artifacts.read_manifest(run_dir / s)["metrics"] for s in ("sft", "rm", "rl"))
    for source in ("gsm8k", "identity", "unknown", "spelling", "calculator"):
        assert f"eval/acc/{source}" in sft and f"eval/acc/{source}" in rl and f"before/eval/acc/{source}" in rl
    assert "eval/acc/arithmetic" not in rl           # eval.tasks names what is evaluated
    report = json.loads((run_dir / "sft" / "data_report.json").read_text())
    demos = builtin_conversations(recipe.sft, recipe.seed, check_families(recipe.sft))
    pieces = [p.rsplit(":", 1)[0] for where, _ in demos for p in where.split("+")]
    assert pieces.count("gsm8k:gsm8k") == 12 and pieces.count("builtin:identity") == 3   # every GSM8K train row
    assert (report["kept"], report["skipped"]) == (len(demos) + 6, 0)                   # + the 6 SmolTalk chats
    assert {("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test"), ("HuggingFaceTB/smoltalk", "all", "train"),
            ("HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs")} <= set(hub)
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert {r["family"] for r in rollouts} == {"gsm8k", "identity", "unknown", "spelling", "calculator"}
    assert all(r["meta"]["verifier"] == "number" for r in rollouts if r["family"] == "gsm8k")
    assert "train/final_loss" in rm and rl["train/steps"] == 2
    assert {"reward/verifier", "train/loss"} <= set(rl)

    ctx = StageContext(stage="eval", out_dir=tmp_path / "ev", run_dir=run_dir, seed=recipe.seed,
                       tracker=Tracker("eval", tmp_path / "ev", run_dir, recipe.name, {}, None, echo=False))
    result = evaluate(run_dir / "rl", "benchmarks", recipe, ctx)
    for name in ("gsm8k", "arc_easy", "arc_challenge", "mmlu", "hellaswag"):
        assert f"eval/{name}/acc" in result.metrics and result.metrics[f"eval/{name}/n"] >= 2
    assert ("Rowan/hellaswag", None, "validation") in hub and ("cais/mmlu", "all", "test") in hub


def test_gym_source_through_rollouts_rankings_and_verifier(tmp_path, tiny_model, tiny_tokenizer):
    from reward.ranking import collect_rankings
    from stages.rm.rollouts import make_rollouts, read_rollouts, rollout_tasks
    spec = "gym:basic_arithmetic?max_terms=2&max_digits=1&label=add"
    tasks = rollout_tasks([spec, "builtin:spelling"], 6, seed=0)
    assert [t.family for t in tasks] == ["add", "spelling"] * 3
    path = tmp_path / "rollouts.jsonl"
    make_rollouts(tiny_model, tiny_tokenizer, tasks, path, k=2, temperature=1.0, top_p=1.0, max_new_tokens=4,
                  seed=0, policy="p", log=lambda *_: None)
    records = read_rollouts(path)
    for record in records:   # a right answer ranks first, scored again from the file by gym's own scorer
        if record["family"] == "add":
            record["completions"][1]["text"] = f"Answer: {record['answer']}<|end|>"
    from pipeline.schema import RMStage
    ranked = collect_rankings(RMStage(rankers=["verifier"]), records, log=lambda *_: None)
    adds = [r for r in ranked if r.family == "add"]
    assert len(adds) == 3 and all(r.gold[1] == 3 and r.ranks[1] == 0 for r in adds)
