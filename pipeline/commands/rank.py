"""`lifecycle rank RECIPE`: the ranking page for people, on 127.0.0.1."""
from __future__ import annotations

from pathlib import Path

from pipeline.commands import recipe_arguments
from pipeline.recipe import load_recipe
from reward.ranking_page import serve


def add_arguments(p) -> None:
    recipe_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rollouts", default=None, help="rollouts JSONL (default: the recipe's)")
    p.add_argument("--out", default=None, help="rankings JSONL (default: runs/<name>/rankings.jsonl)")


def main(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(recipe.output_dir) / recipe.name
    rollouts = args.rollouts or run_dir / "rollouts.jsonl"
    out = args.out or recipe.rm.rankings_file or run_dir / "rankings.jsonl"
    serve(rollouts, out, host=args.host, port=args.port)
    return 0
