"""`lifecycle arena CKPT_A CKPT_B ...`: pairwise comparisons of checkpoints, Bradley-Terry/Elo scores.

    lifecycle arena runs/tiny/sft runs/tiny/rl                        # judged by the task verifier
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge rm:runs/tiny/rm  # judged by the reward model
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge human          # writes pairs for the ranking page;
    lifecycle rank recipes/tiny.yaml --rollouts <pairs> --out <rankings>   # people judge them; then the
    lifecycle arena runs/tiny/sft runs/tiny/rl --judge human          # same command again scores them
    (--judge human also counts battle votes cast in `lifecycle serve`: --votes, default runs/<name>/battles.jsonl)
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from reward.ranking_page import read_rankings
from serve.battle import games_from_votes, read_votes
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
    p.add_argument("--votes", default=None, help="human judge: battle votes JSONL (default: runs/<name>/battles.jsonl)")


def main(args) -> int:
    names = list(args.checkpoints)
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError("arena: expected at least two different checkpoints, e.g. lifecycle arena runs/tiny/sft runs/tiny/rl")
    if args.prompts < 1:
        raise UserError(f"--prompts {args.prompts}: expected at least 1")
    recipe = load_recipe(args.recipe)
    rl, sft = recipe.rl, recipe.sft
    families = list(rl.tasks or rl.families or sft.tasks or sft.families or FAMILIES)
    max_new = args.max_new_tokens or recipe.eval.max_new_tokens
    settings = {"prompts": args.prompts, "families": families, "seed": recipe.seed, "max_new_tokens": max_new,
                "temperature": args.temperature}
    out = arena_dir(Path(recipe.output_dir) / recipe.name, names, settings)
    tasks = held_out_tasks(families, args.prompts, recipe.seed)
    battles: list = []
    if args.judge == "human":  # rankings from the ranking page, and votes cast in `lifecycle serve`'s battle mode
        votes = Path(args.votes or Path(recipe.output_dir) / recipe.name / "battles.jsonl")
        pairs, rankings = out / "pairs.jsonl", out / "rankings.jsonl"
        battles = games_from_votes(read_votes(votes), names, first_prompt=len(tasks))
        games = games_from_rankings(read_rankings(rankings)) + battles
        if not games:
            _, answers = load_or_answer(out, names, tasks, max_new, args.temperature, recipe.seed)
            n = write_pairs(pairs, names, tasks, answers)
            print(f"arena: {n} pairs for people to judge in {pairs}\n  lifecycle rank {args.recipe} "
                  f"--rollouts {pairs} --out {rankings}\nthen run this command again to score them "
                  f"(or vote in `lifecycle serve`'s battle mode: {votes}).")
            return 0
        if (out / "answers.json").is_file():  # pairs were written: those with one text for both players are ties
            _, answers = load_or_answer(out, names, tasks, max_new, args.temperature, recipe.seed)
            games += identical_ties(answers)  # (left out of the page)
    else:
        prompts, answers = load_or_answer(out, names, tasks, max_new, args.temperature, recipe.seed)
        games = games_from_scores(judge_scores(args.judge, prompts, answers, tasks))
    rows = standings(names, games, rounds=args.bootstrap, seed=recipe.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "standings.json").write_text(json.dumps({"judge": args.judge, "games": len(games), "standings": rows},
                                                   indent=2))
    source = f", {len(battles)} of them battle votes from {votes}" if battles else ""
    print(f"arena: {len(games)} games judged by {args.judge} on {len(tasks)} held-out prompts{source} ({out})")
    print(format_standings(rows))
    return 0
