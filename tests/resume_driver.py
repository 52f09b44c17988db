"""Run one stage function in its own process, for the SIGKILL resume tests (tests/test_resume.py).

    python -m tests.resume_driver spec.json

spec.json: {"entry": "stages.sft:run", "stage": "sft", "recipe": {...}, "inputs": {...}, "out_dir", "run_dir",
"threads", "sys_path": [...]}. The stage runs as the runner would run it in process (seeded, a fresh
accelerate state, the recipe seen through the stage's sections), writing into out_dir; a stage that
finishes leaves result.json there.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def call(spec: dict) -> dict:
    """The stage's returned metrics (in this process)."""
    import torch

    from pipeline.context import StageContext, seed_everything
    from pipeline.launch import load_entry, reset_accelerate_state
    from pipeline.recipe import RecipeView
    from pipeline.schema import Recipe
    from pipeline.tracking import Tracker
    torch.set_num_threads(spec["threads"])  # the same reduction order in every process: bit-exact runs
    sys.path[:0] = spec.get("sys_path", [])
    recipe = Recipe.model_validate(spec["recipe"])
    out, run_dir = Path(spec["out_dir"]), Path(spec["run_dir"])
    reset_accelerate_state()
    seed_everything(recipe.seed)
    ctx = StageContext(spec["stage"], out, run_dir, recipe.seed,
                       Tracker(spec["stage"], out, run_dir, recipe.name, {}, None, echo=False))
    view = RecipeView(recipe, tuple(spec["reads"]), spec["stage"])
    return load_entry(spec["entry"])(view, spec["inputs"], ctx)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    metrics = call(spec)
    (Path(spec["out_dir"]) / "result.json").write_text(json.dumps(metrics))
