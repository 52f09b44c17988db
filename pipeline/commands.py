"""The recipe-level commands: run, plan, status."""
from __future__ import annotations

from pipeline.recipe import load_recipe
from pipeline.runner import Runner, status_rows
from stages.data.tasks.sources import describe


def _stages(arg: str | None) -> list[str] | None:
    return [s.strip() for s in arg.split(",") if s.strip()] if arg else None


def _runner(args) -> Runner:
    recipe = load_recipe(args.recipe, args.overrides)
    return Runner(recipe, args.recipe, debug=getattr(args, "debug", False))


def run_cmd(args) -> int:
    runner = _runner(args)
    for stage in args.force:
        runner.closure([stage])  # validates the name
    runner.run(_stages(args.stages), force=tuple(args.force))
    return 0


def plan_cmd(args) -> int:
    runner = _runner(args)
    items = runner.plan(_stages(args.stages))
    width = max(len(i.spec.name) for i in items)
    for item in items:
        print(f"{item.spec.name:<{width}}  {item.action:<13}  {item.reason}")
        for role, info in item.inputs.items():
            print(f"{'':<{width}}    input {role}: {info['path']}")
        for line in describe(runner.recipe, item.spec.name):  # task sources: prompts drawn per split
            print(f"{'':<{width}}    tasks {line}")
        print(f"{'':<{width}}    launch: {item.command}")
    return 0


# What `lifecycle status` shows first for each stage (then any other eval/ metrics).
KEY_METRICS = {
    "tokenizer": ["eval/bytes_per_token"],
    "pretrain": ["eval/val_bpb", "baseline/bigram_bpb"],
    "sft": ["eval/acc", "eval/format", "eval/acc/arithmetic"],
    "rm": ["eval/pairwise_acc", "eval/top1_acc", "eval/n_pairs"],
    "rl": ["eval/acc", "eval/acc/arithmetic", "before/eval/acc/arithmetic"],
}


def _key_metrics(stage: str, metrics: dict, limit: int = 3) -> str:
    preferred = [k for k in KEY_METRICS.get(stage, []) if k in metrics]
    rest = [k for k in metrics if k not in preferred]
    preferred += sorted(rest, key=lambda k: not k.startswith("eval/"))
    shown = []
    for key in preferred[:limit]:
        value = metrics[key]
        label = key.replace("eval/", "").replace("baseline/", "")
        shown.append(f"{label}={value:.4g}" if isinstance(value, float) else f"{label}={value}")
    return ", ".join(shown)


def status_cmd(args) -> int:
    rows = status_rows(_runner(args))
    header = f"{'stage':<10} {'state':<8} {'wall':>8}  {'key metrics':<60} path"
    print(header)
    print("-" * len(header))
    for row in rows:
        wall = f"{row['wall_time_s']:.0f}s" if row["wall_time_s"] is not None else "-"
        print(f"{row['stage']:<10} {row['state']:<8} {wall:>8}  {_key_metrics(row['stage'], row['metrics']):<60} {row['path']}")
    return 0
