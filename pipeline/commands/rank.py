"""`lifecycle rank RECIPE [--order uncertain --reward-model DIR]`: the ranking page for people, on 127.0.0.1."""
from __future__ import annotations

from pathlib import Path

from pipeline.commands import recipe_arguments
from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from reward.rank_queue import rm_order
from reward.ranking_page import load_prompts, serve


def add_arguments(p) -> None:
    recipe_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rollouts", default=None, help="rollouts JSONL (default: the recipe's)")
    p.add_argument("--out", default=None, help="rankings JSONL (default: runs/<name>/rankings.jsonl)")
    p.add_argument("--order", choices=("rollouts", "uncertain"), default="rollouts",
                   help="queue order: the rollouts' (default), or where the reward model is least sure first")
    p.add_argument("--reward-model", default=None,
                   help="RM dir for --order uncertain (default: runs/<name>/rm)")


def main(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(recipe.output_dir) / recipe.name
    rollouts = args.rollouts or run_dir / "rollouts.jsonl"
    out = args.out or recipe.rm.rankings_file or run_dir / "rankings.jsonl"
    if args.reward_model and args.order != "uncertain":
        raise UserError("--reward-model orders the queue only with --order uncertain")
    prompts = load_prompts(rollouts)
    if args.order == "uncertain":
        rm_dir = Path(args.reward_model or run_dir / "rm")
        if not (rm_dir / "config.json").is_file():
            raise UserError(f"--order uncertain: no reward model at {rm_dir}; run the rm stage or pass --reward-model DIR")
        prompts = rm_order(prompts, str(rm_dir), recipe.rm.max_length)
    serve(prompts, out, host=args.host, port=args.port)
    return 0
