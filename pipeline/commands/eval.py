"""Evaluate a checkpoint with one shared metric vocabulary: `lifecycle eval CKPT [--suite NAME]`.

    lifecycle eval runs/tiny/pretrain                      # suite picked from the stage that made it
    lifecycle eval runs/tiny/sft --suite chat --recipe recipes/tiny.yaml
    lifecycle eval runs/tiny/rl --suite rl --reference runs/tiny/sft
    lifecycle eval runs/tiny/sft --suite gsm8k --data-file gsm8k_test.jsonl --limit 100

Suites (the same names the stages log at their end, so W&B panels and the report compare them):
- base:  eval/val_loss, eval/val_bpb on the recipe's held-out documents (stages.eval.bpb.val_bits_per_byte)
         and a table of sampled continuations (eval.samples of them);
- chat:  eval/acc/<family>, eval/format/<family>, eval/acc, eval/format on held-out tasks of eval.tasks (else sft's)
         (stages.eval.families.evaluate_families, greedy, calculator on, search on when the checkpoint dir
         holds an index) and a completions table;
- rm:    eval/pairwise_acc, eval/top1_acc (+ /<family>, and gold_ variants against the verifier) on
         the held-out ranked rollouts of the recipe's run (the rm stage's split and metrics, stages/rm/);
- rl:    gold accuracy (the chat metrics), pass@k, eval/rm_reward, eval/kl to the reference policy,
         eval/length (stages.policy_gradient.evaluate, what the RL stage reports before and after training);
- gsm8k, arc_easy, arc_challenge, hellaswag, mmlu: eval/<name>/acc[, acc_norm] (stages/eval/benchmarks.py);
  `benchmarks` runs every one listed in the recipe's eval.benchmarks.
Results print as a table, go to runs/<name>/eval/<ckpt>-<suite>/ (metrics.jsonl, tables, W&B with
job_type "eval" when the recipe tracks) and, with --out, to a JSON file. `run()` follows the stage
contract, so an eval can also run through pipeline.launch.call_stage with inputs {"model": CKPT}.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import artifacts
from pipeline.context import StageContext, seed_everything
from pipeline.errors import UserError
from pipeline.recipe import load_recipe, recipe_to_dict
from pipeline.schema import Recipe, Tracking
from pipeline.tracking import Tracker
from reward.model_scorer import RewardModelScorer, load_reward_fn
from reward.ranking import collect_rankings
from stages.data.sources import split_documents
from stages.data.tasks.sources import stage_sources
from stages.eval.benchmarks import BENCHMARKS, run_benchmark
from stages.eval.bpb import val_bits_per_byte
from stages.eval.families import evaluate_families
from stages.lm.generation import generate
from stages.lm.model import load_causal_lm
from stages.policy_gradient.evaluate import evaluate as evaluate_policy
from stages.rm.best_of_k import best_of_k_metrics
from stages.rm.data import encode, is_test, split_key
from stages.rm.metrics import ranking_metrics, score_examples
from stages.rm.rollouts import read_rollouts
from stages.tools.search import load_search_index

CHAT_SUITES = ("base", "chat", "rm", "rl")
STAGE_SUITE = {"pretrain": "base", "sft": "chat", "rm": "rm", "rl": "rl"}
SAMPLE_WORDS = 8  # words of a held-out document that prompt a base-model sample


@dataclass
class EvalResult:
    metrics: dict[str, float]
    tables: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)  # key -> (columns, rows)


def suites() -> tuple[str, ...]:
    return CHAT_SUITES + tuple(BENCHMARKS)


def detect_suite(checkpoint: str | Path) -> str:
    """The suite for a checkpoint: from the stage that made it, else from its architecture."""
    path = Path(checkpoint)
    manifest = artifacts.read_manifest(path) or {}
    if manifest.get("stage") in STAGE_SUITE:
        return STAGE_SUITE[manifest["stage"]]
    config = path / "config.json"
    archs = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    return "rm" if any("SequenceClassification" in a for a in archs) else "base"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _input_of(checkpoint: str | Path, role: str) -> str | None:
    """An input path the runner recorded in the checkpoint's manifest (e.g. rl's policy = its reference)."""
    manifest = artifacts.read_manifest(Path(checkpoint)) or {}
    return (manifest.get("inputs", {}).get(role) or {}).get("path")


# ------------------------------------------------------------------ suites
def suite_base(model, tokenizer, recipe, limit: int | None = None) -> EvalResult:
    _, val_docs = split_documents(recipe.data, recipe.seed)
    val_docs = val_docs[:limit] if limit else val_docs
    out = val_bits_per_byte(model, tokenizer, texts=val_docs, max_tokens=recipe.pretrain.eval_tokens)
    metrics = {f"eval/{k}": v for k, v in out.items()}
    prompts_text = [" ".join(doc.split()[:SAMPLE_WORDS]) for doc in val_docs[:recipe.eval.samples]]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts_text]
    outs = generate(model, tokenizer, prompts, max_new_tokens=48, temperature=0.8, top_k=50, use_tools=False,
                    seed=recipe.seed)
    rows = [[p, o[0].text] for p, o in zip(prompts_text, outs)]
    return EvalResult(metrics, {"samples/base": (["prompt", "continuation"], rows)})


def families_of(recipe) -> list[str]:
    """The chat suite's task sources: eval.tasks, else sft's (stages/data/tasks/sources.py)."""
    return stage_sources(recipe, "chat")


def suite_chat(model, tokenizer, recipe, limit: int | None = None, search=None) -> EvalResult:
    ev = recipe.eval
    metrics, rows = evaluate_families(model, tokenizer, families_of(recipe), limit or ev.max_prompts_per_family,
                                      recipe.seed, ev.max_new_tokens, use_tools=True, return_rows=True,
                                      search=search)
    columns = ["family", "prompt", "completion", "answer", "score", "well_formed"]
    return EvalResult(metrics, {"samples/chat": (columns, rows)})


def suite_rl(model, tokenizer, recipe, checkpoint, ctx, reference: str | None = None,
             reward_model: str | None = None, search=None) -> EvalResult:
    reference = reference or _input_of(checkpoint, "policy")
    if not reference:
        raise UserError(f"{checkpoint}: the rl suite needs a reference policy for KL; pass --reference SFT_DIR")
    ref_model, _ = load_causal_lm(reference, _device())
    rm_fn = None
    reward_model = reward_model or _input_of(checkpoint, "reward_model")
    if reward_model:
        rm_fn = load_reward_fn(reward_model, device=_device())
    return EvalResult(evaluate_policy(model, ref_model, tokenizer, recipe, rm_fn, ctx, "eval", search))


def suite_rm(checkpoint, recipe, ctx, limit: int | None = None) -> EvalResult:
    """The rm stage's held-out metrics for any RM dir: the recipe's rollouts, ranked by its rankers, test split."""
    path = ctx.run_dir / "rollouts.jsonl"
    rollouts = read_rollouts(path)
    if not rollouts:
        raise UserError(f"{path}: no rollouts to evaluate the RM on; run `lifecycle rollouts RECIPE` "
                        "(or the rm stage) and pass --recipe")
    cfg = recipe.rm
    ranked = [r for r in collect_rankings(cfg, rollouts, _device(), log=ctx.log) if is_test(split_key(r), cfg.test_fraction)]
    ranked = ranked[:limit] if limit else ranked
    scorer = RewardModelScorer(checkpoint, device=_device())
    examples = encode(ranked, scorer.tokenizer, cfg.max_length)
    if not examples:
        raise UserError(f"{path}: no held-out ranked prompts (rm.test_fraction {cfg.test_fraction})")
    rewards = score_examples(scorer.model, examples, scorer.pad_id, scorer.device, scorer.offset)
    rows = [[e.family, scorer.tokenizer.decode(e.seqs[i][-80:]), round(float(r[i]), 3), e.ranks[i],
             e.gold[i] if e.gold else None] for e, r in list(zip(examples, rewards))[:10] for i in range(len(e.seqs))]
    metrics = ranking_metrics(examples, rewards) | best_of_k_metrics(examples, rewards) | \
        {"eval/n_prompts": float(len(examples))}
    return EvalResult(metrics, {"samples/rm": (["family", "completion_tail", "reward", "rank", "gold_tier"], rows)})


def suite_benchmark(name, model, tokenizer, recipe, checkpoint, limit=None, data_file=None) -> EvalResult:
    chat = detect_suite(checkpoint) in ("chat", "rl")
    metrics, rows = run_benchmark(name, model, tokenizer, limit=limit or recipe.eval.benchmark_limit,
                                  data_file=data_file or recipe.eval.benchmark_files.get(name), chat=chat,
                                  max_new_tokens=recipe.eval.benchmark_max_new_tokens, device=_device())
    columns = ["question", "completion", "predicted", "answer", "correct"]
    return EvalResult(metrics, {f"samples/{name}": (columns, rows)} if rows else {})


def suite_benchmarks(model, tokenizer, recipe, checkpoint, limit=None) -> EvalResult:
    """Every benchmark the recipe lists in eval.benchmarks (local files from eval.benchmark_files)."""
    names = recipe.eval.benchmarks
    if not names:
        raise UserError("eval.benchmarks: empty; list some of " + ", ".join(BENCHMARKS) + " (or pass --suite NAME)")
    for name in list(names) + list(recipe.eval.benchmark_files):
        if name not in BENCHMARKS:
            raise UserError(f"eval.benchmarks: unknown benchmark '{name}'; expected some of {', '.join(BENCHMARKS)}")
    result = EvalResult({})
    for name in names:
        part = suite_benchmark(name, model, tokenizer, recipe, checkpoint, limit)
        result.metrics.update(part.metrics)
        result.tables.update(part.tables)
    return result


def evaluate(checkpoint: str | Path, suite: str, recipe, ctx, *, limit: int | None = None,
             data_file: str | None = None, reference: str | None = None,
             reward_model: str | None = None) -> EvalResult:
    """Run one suite on a checkpoint dir (or hub id)."""
    suite = detect_suite(checkpoint) if suite == "auto" else suite
    if suite not in suites() + ("benchmarks",):
        raise UserError(f"--suite {suite}: unknown; expected auto, benchmarks or one of {', '.join(suites())}")
    if suite == "rm":
        return suite_rm(checkpoint, recipe, ctx, limit)
    model, tokenizer = load_causal_lm(checkpoint, _device())
    if suite == "base":
        return suite_base(model, tokenizer, recipe, limit)
    search = load_search_index(checkpoint)   # the one the stages sampled with, when the dir has one
    if suite == "chat":
        return suite_chat(model, tokenizer, recipe, limit, search)
    if suite == "rl":
        return suite_rl(model, tokenizer, recipe, checkpoint, ctx, reference, reward_model, search)
    if suite == "benchmarks":
        return suite_benchmarks(model, tokenizer, recipe, checkpoint, limit)
    return suite_benchmark(suite, model, tokenizer, recipe, checkpoint, limit, data_file)


# ------------------------------------------------------------------ entry points
def log_result(result: EvalResult, ctx) -> None:
    for key, (columns, rows) in result.tables.items():
        ctx.tracker.table(key, columns, rows)
    ctx.tracker.log(result.metrics)


def run(recipe, inputs, ctx) -> dict[str, float]:
    """Stage-contract eval of inputs["model"] (suite from the stage that made it)."""
    if "model" not in inputs:
        raise UserError("eval: inputs need a 'model' (a checkpoint dir)")
    suite = detect_suite(inputs["model"])
    ctx.log(f"evaluating {inputs['model']} with the {suite} suite")
    result = evaluate(inputs["model"], suite, recipe, ctx)
    log_result(result, ctx)
    return result.metrics


def _recipe(path: Path | None):
    if path is not None:
        return load_recipe(path)
    return Recipe(name="eval", tracking=Tracking(wandb=False))  # defaults; nothing sent to W&B


def format_metrics(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items()))


def add_arguments(p) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--suite", default="auto", help="auto|base|chat|rm|rl|gsm8k|arc_easy|arc_challenge|hellaswag|mmlu|benchmarks (eval.benchmarks)")
    p.add_argument("--recipe", type=Path, default=None, help="take eval settings from this recipe")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data-file", default=None, help="local jsonl/parquet for a benchmark suite")
    p.add_argument("--reference", default=None, help="rl suite: reference policy dir for KL (default: its input)")
    p.add_argument("--reward-model", default=None, help="rl suite: RM dir for the mean RM reward")
    p.add_argument("--out", default=None, help="also write the metrics as JSON here")


def main(args) -> int:
    if not Path(args.checkpoint).exists() and args.checkpoint.count("/") != 1:
        raise UserError(f"{args.checkpoint}: no checkpoint dir there (expected an HF model dir or hub id)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: expected at least 1")
    recipe = _recipe(args.recipe)
    suite = detect_suite(args.checkpoint) if args.suite == "auto" else args.suite
    run_dir = Path(recipe.output_dir) / recipe.name
    out_dir = run_dir / "eval" / f"{Path(args.checkpoint).name}-{suite}"
    seed_everything(recipe.seed)
    tracker = Tracker("eval", out_dir, run_dir, recipe.name, recipe_to_dict(recipe) | {"checkpoint": args.checkpoint,
                      "suite": suite}, recipe.tracking)
    ctx = StageContext(stage="eval", out_dir=out_dir, run_dir=run_dir, seed=recipe.seed, tracker=tracker)
    try:
        result = evaluate(args.checkpoint, suite, recipe, ctx, limit=args.limit, data_file=args.data_file,
                          reference=args.reference, reward_model=args.reward_model)
        log_result(result, ctx)
        tracker.summary(result.metrics)
    finally:
        tracker.finish()
    print(f"eval {args.checkpoint} ({suite} suite) -> {out_dir}")
    print(format_metrics(result.metrics))
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "suite": suite,
                                              "metrics": result.metrics}, indent=2) + "\n")
    return 0
