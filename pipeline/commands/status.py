"""`lifecycle status RECIPE`: one row per stage: state, wall time, key metrics, path."""
from __future__ import annotations

from pipeline.artifacts import KEY_METRICS
from pipeline.commands import recipe_arguments
from pipeline.recipe import load_recipe
from pipeline.runner import Runner, status_rows


def add_arguments(p) -> None:
    recipe_arguments(p)


def key_metrics(stage: str, metrics: dict, limit: int = 3) -> str:
    preferred = [k for k in KEY_METRICS.get(stage, []) if k in metrics]
    rest = [k for k in metrics if k not in preferred]
    preferred += sorted(rest, key=lambda k: not k.startswith("eval/"))
    shown = []
    for key in preferred[:limit]:
        value = metrics[key]
        label = key.replace("eval/", "").replace("baseline/", "")
        shown.append(f"{label}={value:.4g}" if isinstance(value, float) else f"{label}={value}")
    return ", ".join(shown)


def main(args) -> int:
    rows = status_rows(Runner(load_recipe(args.recipe, args.overrides), args.recipe))
    header = f"{'stage':<10} {'state':<8} {'wall':>8}  {'key metrics':<60} path"
    print(header)
    print("-" * len(header))
    for row in rows:
        wall = f"{row['wall_time_s']:.0f}s" if row["wall_time_s"] is not None else "-"
        print(f"{row['stage']:<10} {row['state']:<8} {wall:>8}  {key_metrics(row['stage'], row['metrics']):<60} {row['path']}")
    return 0
