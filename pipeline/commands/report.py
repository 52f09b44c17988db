"""`lifecycle report RECIPE`: runs/<name>/report.md with plots, and one W&B summary run per state of the run."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import artifacts
from pipeline.commands import recipe_arguments
from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from pipeline.report import log_summary_to_wandb, summary_state, write_report


def add_arguments(p) -> None:
    recipe_arguments(p)


def main(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(recipe.output_dir) / recipe.name
    if not run_dir.is_dir():
        raise UserError(f"{args.recipe}: no run at {run_dir}; run the recipe first (lifecycle run {args.recipe})")
    report = write_report(run_dir, recipe.name, [s["name"] for s in recipe.chain()])
    print(f"report: {report.path} ({len(report.stages)} stages; plots: {', '.join(report.plots) or 'none'})")
    if recipe.tracking.wandb:
        # Once per state of the run: `make all` on a finished run reports again, and a summary run each
        # time would crowd the group with copies.
        record, state = run_dir / "report" / "wandb_summary.json", summary_state(report)
        logged = json.loads(record.read_text()) if record.is_file() else {}
        if logged.get("state") == state:
            print(f"report: W&B summary run up to date ({logged.get('run')})")
        else:
            where = log_summary_to_wandb(report, recipe)
            print(f"report: W&B summary run {where}")
            if where is not None:
                artifacts.write_json_atomic(record, {"state": state, "run": where})
    return 0
