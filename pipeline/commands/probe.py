"""`lifecycle probe regurgitation|knowledge CKPT`: how much training text a model continues verbatim, and
which of the corpus's facts it knows (docs/knowledge.md)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from stages.data.facts import world_of
from stages.data.sources import iter_split
from stages.eval.knowledge import LABELS, label, probe
from stages.eval.probes import regurgitation
from stages.lm.sampling import load_for_sampling


def add_arguments(p) -> None:
    p.add_argument("probe", choices=["regurgitation", "knowledge"])
    p.add_argument("checkpoint")
    p.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"), help="recipe whose data to probe")
    p.add_argument("--documents", type=int, default=50, help="regurgitation: documents per split")
    p.add_argument("--prefix-tokens", type=int, default=32, help="regurgitation: prompt length")
    p.add_argument("--continue-tokens", type=int, default=32, help="regurgitation: tokens that must match")
    p.add_argument("--examples", type=int, default=3, help="knowledge: questions shown per label")


def main(args) -> int:
    recipe = load_recipe(args.recipe)
    model, tokenizer = load_for_sampling(args.checkpoint)
    return (knowledge if args.probe == "knowledge" else regurgitation_main)(args, recipe, model, tokenizer)


def regurgitation_main(args, recipe, model, tokenizer) -> int:
    train, val = [], []
    for held_out, doc in iter_split(recipe.data, recipe.seed):
        bucket = val if held_out else train
        if len(bucket) < args.documents:
            bucket.append(doc)
        if len(train) >= args.documents and len(val) >= args.documents:
            break
    result = regurgitation(model, tokenizer, train, val, args.prefix_tokens, args.continue_tokens)
    print(f"regurgitation of {args.checkpoint} on {recipe.data.source} data "
          f"(prefix {args.prefix_tokens} tokens, greedy, verbatim for {args.continue_tokens} tokens):")
    for split in ("train", "val"):
        print(f"  {split:<5} {result[f'probe/{split}_verbatim']:6.1%} verbatim, "
              f"{result[f'probe/{split}_match_tokens']:5.1f} tokens match on average "
              f"({result[f'probe/{split}_documents']:.0f} documents)")
    return 0


def knowledge(args, recipe, model, tokenizer) -> int:
    world = world_of(recipe.data.facts)
    if world is None:
        raise UserError(f"{args.recipe}: data.facts.people is 0; the knowledge probe asks about the facts a recipe "
                        "mixes into its corpus (docs/knowledge.md)")
    cfg = recipe.sft.knowledge
    questions = world.questions(test_share=cfg.test_share)
    shares = probe(model, tokenizer, questions, cfg.probe_samples, recipe.seed)
    labels = {q.key: label(shares[q.key], cfg.known_at, cfg.unknown_at) for q in questions}
    print(f"knowledge probe of {args.checkpoint}: {len(questions)} questions about {len(world.people)} people, "
          f"{cfg.probe_samples} T=1 cloze samples each (known: >= {cfg.known_at:.0%} right, "
          f"unknown: <= {cfg.unknown_at:.0%})")
    for split in ("train", "test"):
        counts = Counter(labels[q.key] for q in questions if q.split == split)
        total = sum(counts.values())
        print(f"  {split:<5} " + "  ".join(f"{lab} {counts[lab] / total:5.1%}" for lab in LABELS) + f"  ({total})")
    print("  known share by mentions in the corpus:")
    for repeats in sorted({q.repeats for q in questions}):
        mine = [q for q in questions if q.repeats == repeats]
        print(f"    {repeats:>4}x  {sum(labels[q.key] == 'known' for q in mine) / len(mine):5.1%} known, "
              f"{sum(labels[q.key] == 'unknown' for q in mine) / len(mine):5.1%} unknown ({len(mine)})")
    for lab in LABELS:
        for q in [q for q in questions if labels[q.key] == lab][:args.examples]:
            print(f"  [{lab}] {q.cloze} ... {q.answer}  ({shares[q.key]:.0%} of samples right, {q.repeats}x)")
    return 0
