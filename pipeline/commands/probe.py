"""`lifecycle probe regurgitation CKPT`: how much training text a model continues verbatim."""
from __future__ import annotations

from pathlib import Path

from pipeline.recipe import load_recipe
from stages.data.sources import iter_split
from stages.eval.probes import regurgitation
from stages.lm.sampling import load_for_sampling


def add_arguments(p) -> None:
    p.add_argument("probe", choices=["regurgitation"])
    p.add_argument("checkpoint")
    p.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"), help="recipe whose data to probe")
    p.add_argument("--documents", type=int, default=50)
    p.add_argument("--prefix-tokens", type=int, default=32)
    p.add_argument("--continue-tokens", type=int, default=32)


def main(args) -> int:
    recipe = load_recipe(args.recipe)
    train, val = [], []
    for held_out, doc in iter_split(recipe.data, recipe.seed):
        bucket = val if held_out else train
        if len(bucket) < args.documents:
            bucket.append(doc)
        if len(train) >= args.documents and len(val) >= args.documents:
            break
    model, tokenizer = load_for_sampling(args.checkpoint)
    result = regurgitation(model, tokenizer, train, val, args.prefix_tokens, args.continue_tokens)
    print(f"regurgitation of {args.checkpoint} on {recipe.data.source} data "
          f"(prefix {args.prefix_tokens} tokens, greedy, verbatim for {args.continue_tokens} tokens):")
    for split in ("train", "val"):
        print(f"  {split:<5} {result[f'probe/{split}_verbatim']:6.1%} verbatim, "
              f"{result[f'probe/{split}_match_tokens']:5.1f} tokens match on average "
              f"({result[f'probe/{split}_documents']:.0f} documents)")
    return 0
