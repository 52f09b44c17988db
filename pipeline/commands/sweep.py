"""`lifecycle sweep RECIPE seed=1337,7,42 [KEY=V1,V2 ...] [--stages a,b] [--name NAME]`: every combination
of the comma lists as its own run (one W&B group), then runs/<sweep name>/sweep.md + sweep.json with
mean, sd and each point's value of every final metric (pipeline/sweep.py, pipeline/sweep_report.py)."""
from __future__ import annotations

from pathlib import Path

from pipeline.commands import stage_list
from pipeline.runner import Runner
from pipeline.sweep import plan_sweep, run_sweep, stage_names
from pipeline.sweep_report import write_sweep_report


def add_arguments(p) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML, e.g. recipes/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=V1,V2",
                   help="comma lists of dotted overrides, e.g. seed=1337,7,42 rm.k=4,8 (one value: fixed)")
    p.add_argument("--stages", default=None, help="comma-separated stage names (default: all of the recipe's)")
    p.add_argument("--name", default=None, help="the sweep's name: W&B group, runs/<name>/sweep.md "
                                                "(default: <recipe name>-sweep-<keys>)")
    p.add_argument("--plan", action="store_true", help="list the points and what each would run; run nothing")


def show_plan(args, stages=None) -> int:
    sweep = plan_sweep(args.recipe, args.overrides, args.name)
    print(f"sweep {sweep.name}: {len(sweep.points)} points")
    for point in sweep.points:
        items = Runner(sweep.recipes[point.name], args.recipe, stages=stages).plan(stage_list(args.stages))
        todo = [i.spec.name for i in items if i.action != "skip"]
        print(f"  {point.name}: {'run ' + ', '.join(todo) if todo else 'up to date'}")
    return 0


def main(args, stages=None) -> int:
    if args.plan:
        return show_plan(args, stages)
    sweep = run_sweep(args.recipe, args.overrides, stage_list(args.stages), args.name, stages=stages, debug=args.debug)
    first = sweep.recipes[sweep.points[0].name]
    out_dir = Path(first.output_dir) / sweep.name
    run_dirs = {p.name: Path(sweep.recipes[p.name].output_dir) / p.name for p in sweep.points}
    names = {p: stage_names(r, stages) for p, r in sweep.recipes.items()}
    failed = {p: str(exc) for p, exc in sweep.failed.items()}
    data = write_sweep_report(out_dir, sweep.name, sweep.points, run_dirs, names, args.recipe, failed)
    print(f"sweep: {out_dir / 'sweep.md'} ({len(sweep.points) - len(failed)}/{len(sweep.points)} points finished; "
          f"plots: {', '.join(data['plots']) or 'none'})")
    if sweep.failed:  # exit 1 naming the first crash; its log path names the point's run dir
        raise next(iter(sweep.failed.values()))
    return 0
