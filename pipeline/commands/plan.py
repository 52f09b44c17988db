"""`lifecycle plan RECIPE`: what `run` would do, stage by stage, with inputs and launch commands."""
from __future__ import annotations

from pipeline.commands import recipe_arguments, stage_list
from pipeline.recipe import load_recipe
from pipeline.runner import Runner


def add_arguments(p) -> None:
    recipe_arguments(p)
    p.add_argument("--stages", default=None)


def main(args) -> int:
    runner = Runner(load_recipe(args.recipe, args.overrides), args.recipe)
    items = runner.plan(stage_list(args.stages))
    width = max(len(i.spec.name) for i in items)
    for item in items:
        print(f"{item.spec.name:<{width}}  {item.action:<13}  {item.reason}")
        for role, info in item.inputs.items():
            print(f"{'':<{width}}    input {role}: {info['path']}")
        print(f"{'':<{width}}    launch: {item.command}")
    return 0
