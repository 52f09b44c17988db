"""Run a stage: in this process (one process), or under `accelerate launch` (N processes, M machines).

The distributed path runs `python -m pipeline.worker` in every process; the worker loads the
resolved recipe and inputs the runner wrote into the stage's .tmp dir, calls the same stage function,
and rank 0 writes result.json. Engines (DDP, FSDP, DeepSpeed ZeRO) are accelerate config files in
recipes/engines/<engine>.yaml.
"""
from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pipeline.context import StageContext, seed_everything
from pipeline.schema import Distributed, Recipe
from pipeline.tracking import Tracker

ENGINES_DIR = Path(__file__).resolve().parent.parent / "recipes" / "engines"


def load_entry(entry: str):
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def call_stage(recipe: Recipe, entry: str, stage: str, inputs: dict[str, str], out_dir: Path,
               run_dir: Path) -> dict:
    """Seed, build the context, run the stage function; returns {"metrics", "wandb"} on every rank."""
    from pipeline.recipe import recipe_to_dict
    seed_everything(recipe.seed)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    config = recipe_to_dict(recipe)
    tracker = Tracker(stage, out_dir, run_dir, recipe.name, config, recipe.tracking, is_main=rank == 0)
    ctx = StageContext(stage=stage, out_dir=Path(out_dir), run_dir=Path(run_dir), seed=recipe.seed,
                       tracker=tracker, num_processes=world)
    try:
        metrics = load_entry(entry)(recipe, inputs, ctx) or {}
        tracker.summary(metrics)
    finally:
        wandb_path = tracker.finish()
    return {"metrics": {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()},
            "wandb": wandb_path}


def run_in_process(recipe: Recipe, entry: str, stage: str, inputs: dict[str, str], out_dir: Path,
                   run_dir: Path) -> dict:
    return call_stage(recipe, entry, stage, inputs, out_dir, run_dir)


def accelerate_command(dist: Distributed, entry: str, stage_dir: Path, run_dir: Path, stage: str) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    engine_file = ENGINES_DIR / f"{dist.engine}.yaml"
    if dist.engine not in ("none", "ddp") and engine_file.is_file():
        cmd += ["--config_file", str(engine_file)]
    else:
        cmd += ["--multi_gpu"]  # plain DDP; on CPU this runs gloo processes (`--cpu` would start one)
    cmd += ["--num_processes", str(dist.num_processes), "--num_machines", str(dist.num_machines),
            "--main_process_port", str(dist.main_process_port), "--mixed_precision", dist.mixed_precision]
    if dist.num_machines > 1:
        cmd += ["--machine_rank", os.environ.get("MACHINE_RANK", "0"),
                "--main_process_ip", dist.main_process_ip or os.environ.get("MAIN_PROCESS_IP", "127.0.0.1")]
    cmd += ["-m", "pipeline.worker", "--entry", entry, "--stage", stage, "--stage-dir", str(stage_dir),
            "--run-dir", str(run_dir)]
    return cmd


def run_distributed(dist: Distributed, entry: str, stage_dir: Path, run_dir: Path, stage: str) -> dict:
    cmd = accelerate_command(dist, entry, stage_dir, run_dir, stage)
    result_path = Path(stage_dir) / "result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.num_processes)))
    with open(Path(stage_dir) / "launch.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:  # tee: the user sees progress, the log keeps it
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    if rc != 0 or not result_path.is_file():
        raise RuntimeError(f"accelerate launch exited with code {rc} (see {Path(stage_dir) / 'launch.log'})")
    return json.loads(result_path.read_text())


def describe(dist: Distributed, recipe_path: Path, stage: str, run_dir: Path) -> str:
    """The exact command that runs the stage (printed by `lifecycle plan`)."""
    from pipeline.runner import STAGES
    entry = next((s.entry for s in STAGES if s.name == stage), f"stages.{stage}:run")
    stage_dir = Path(run_dir) / f"{stage}.tmp"
    if dist.num_processes * dist.num_machines == 1:
        return f"in-process: {entry}(recipe={recipe_path}, out={stage_dir})"
    cmd = accelerate_command(dist, entry, stage_dir, run_dir, stage)
    cmd[0:3] = ["accelerate", "launch"]
    return shlex.join(cmd)
