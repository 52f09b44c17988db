"""`lifecycle plan RECIPE`: what `run` would do, stage by stage, with inputs and launch commands."""
from __future__ import annotations

from pipeline.commands import recipe_arguments, stage_list
from pipeline.recipe import RecipeView, load_recipe
from pipeline.runner import Runner
from stages.data.tasks.sources import describe


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
        view = RecipeView(runner.recipe, tuple(type(runner.recipe).model_fields), item.spec.name)
        for line in describe(view, item.spec.kind or item.spec.name):  # task sources: prompts drawn per split
            print(f"{'':<{width}}    tasks {line}")
        print(f"{'':<{width}}    launch: {item.command}")
    return 0
