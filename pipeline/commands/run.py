"""`lifecycle run RECIPE [KEY=VALUE ...] [--stages a,b] [--force s]`: run stages and whatever they need, make-style."""
from __future__ import annotations

from pipeline.commands import recipe_arguments, stage_list
from pipeline.recipe import load_recipe
from pipeline.runner import Runner


def add_arguments(p) -> None:
    recipe_arguments(p)
    p.add_argument("--stages", default=None, help="comma-separated stage names (default: all of the recipe's)")
    p.add_argument("--force", action="append", default=[], help="rerun this stage even if up to date")


def main(args) -> int:
    runner = Runner(load_recipe(args.recipe, args.overrides), args.recipe, debug=args.debug)
    for stage in args.force:
        runner.closure([stage])  # validates the name
    runner.run(stage_list(args.stages), force=tuple(args.force))
    return 0
