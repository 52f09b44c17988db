"""`lifecycle arena CKPT_A CKPT_B ...`: pairwise comparisons of checkpoints, Bradley-Terry/Elo scores.

    lifecycle arena runs/tiny/sft runs/tiny/rl                        # judged by the task verifier
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge rm:runs/tiny/rm  # judged by the reward model
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge human          # writes pairs for the ranking page;
    lifecycle rank recipes/tiny.yaml --rollouts <pairs> --out <rankings>   # people judge them; then the
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge human          # same command again scores them
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from reward.ranking_page import read_rankings
from stages.data.tasks import FAMILIES
from stages.eval.arena import (
    arena_dir,
    format_standings,
    games_from_rankings,
    games_from_scores,
    held_out_tasks,
    identical_ties,
    judge_scores,
    load_or_answer,
    standings,
    write_pairs,
)


def add_arguments(p) -> None:
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--judge", default="verifier", help="verifier | rm:<RM dir> | human")
    p.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"))
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the answers (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's eval.max_new_tokens")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap rounds for the 95%% intervals")


def main(args) -> int:
    names = list(args.checkpoints)
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError("arena: expected at least two different checkpoints, e.g. lifecycle arena runs/tiny/sft runs/tiny/rl")
    if args.prompts < 1:
        raise UserError(f"--prompts {args.prompts}: expected at least 1")
    recipe = load_recipe(args.recipe)
    families = list(recipe.rl.families or recipe.sft.families or FAMILIES)
    max_new = args.max_new_tokens or recipe.eval.max_new_tokens
    settings = {"prompts": args.prompts, "families": families, "seed": recipe.seed, "max_new_tokens": max_new,
                "temperature": args.temperature}
    out = arena_dir(Path(recipe.output_dir) / recipe.name, names, settings)
    tasks = held_out_tasks(families, args.prompts, recipe.seed)
    prompts, answers = load_or_answer(out, names, tasks, max_new, args.temperature, recipe.seed)
    if args.judge == "human":
        pairs, rankings = out / "pairs.jsonl", out / "rankings.jsonl"
        games = games_from_rankings(read_rankings(rankings))
        if not games:
            n = write_pairs(pairs, names, tasks, answers)
            print(f"arena: {n} pairs for people to judge in {pairs}\n  lifecycle rank {args.recipe} "
                  f"--rollouts {pairs} --out {rankings}\nthen run this command again to score them.")
            return 0
        games += identical_ties(answers)  # left out of the page: the same text from both players is a tie
    else:
        games = games_from_scores(judge_scores(args.judge, prompts, answers, tasks))
    rows = standings(names, games, rounds=args.bootstrap, seed=recipe.seed)
    (out / "standings.json").write_text(json.dumps({"judge": args.judge, "games": len(games), "standings": rows},
                                                   indent=2))
    print(f"arena: {len(games)} games judged by {args.judge} on {len(tasks)} held-out prompts ({out})")
    print(format_standings(rows))
    return 0
