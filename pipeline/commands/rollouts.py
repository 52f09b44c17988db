"""`lifecycle rollouts RECIPE`: K completions per prompt from the SFT policy, for ranking (resumable)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.commands import recipe_arguments
from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from stages.rm.rollouts import rollouts_for_recipe


def add_arguments(p) -> None:
    recipe_arguments(p)


def main(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(recipe.output_dir) / recipe.name
    model_dir = recipe.rm.from_ or str(run_dir / "sft")
    if not recipe.rm.from_ and not (run_dir / "sft" / "manifest.json").is_file():
        raise UserError(f"rollouts: no SFT model at {run_dir / 'sft'}; run `lifecycle run {args.recipe} --stages sft`"
                        " or set rm.from")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    records = rollouts_for_recipe(recipe, model_dir, run_dir / "rollouts.jsonl", device)
    print(f"{len(records)} prompts x {recipe.rm.k} completions in {run_dir / 'rollouts.jsonl'}")
    return 0
