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
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.context import StageContext, seed_everything
from pipeline.errors import UserError
from pipeline.logging_setup import third_party_output
from pipeline.recipe import RecipeView, recipe_to_dict
from pipeline.schema import Distributed, Recipe
from pipeline.tracking import Tracker

ENGINES_DIR = Path(__file__).resolve().parent.parent / "recipes" / "engines"


def load_entry(entry: str):
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def call_stage(recipe: Recipe, entry: str, stage: str, inputs: dict[str, str], out_dir: Path,
               run_dir: Path, reads: tuple[str, ...] | None = None) -> dict:
    """Seed, build the context, run the stage function; returns {"metrics", "wandb"} on every rank.

    reads: the recipe sections the stage's fingerprint covers; the stage then sees only those (RecipeView).
    None passes the whole recipe (commands such as `lifecycle eval` that are not fingerprinted)."""
    seed_everything(recipe.seed)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    config = recipe_to_dict(recipe)
    tracker = Tracker(stage, out_dir, run_dir, recipe.name, config, recipe.tracking, is_main=rank == 0)
    ctx = StageContext(stage=stage, out_dir=Path(out_dir), run_dir=Path(run_dir), seed=recipe.seed,
                       tracker=tracker, num_processes=world)
    try:
        view = recipe if reads is None else RecipeView(recipe, reads, stage)
        with third_party_output(tracker.log_file):  # off a terminal: library bars off, warnings to log.txt
            metrics = load_entry(entry)(view, inputs, ctx) or {}
        tracker.summary(metrics)
    finally:
        wandb_path = tracker.finish()
    return {"metrics": {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()},
            "wandb": wandb_path}


def run_in_process(recipe: Recipe, entry: str, stage: str, inputs: dict[str, str], out_dir: Path,
                   run_dir: Path, reads: tuple[str, ...] | None = None) -> dict:
    reset_accelerate_state()
    try:
        return call_stage(recipe, entry, stage, inputs, out_dir, run_dir, reads)
    finally:
        reset_accelerate_state()


def reset_accelerate_state() -> None:
    """Forget the previous in-process stage's Accelerator settings.

    accelerate keeps one AcceleratorState per process: after SFT built Accelerator(mixed_precision=
    "bf16") on a GPU, the rm stage's Accelerator(mixed_precision="no") would raise "AcceleratorState has
    already been initialized". Stages run one after another in `lifecycle run`, so each starts clean."""
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState  # lazy: only once a stage has loaded accelerate
        AcceleratorState._reset_state()


def engine_args(dist: Distributed) -> list[str]:
    """accelerate flags that pick the engine: plain DDP flags, or an engine config (+ its DeepSpeed JSON)."""
    if dist.engine in ("none", "ddp"):
        return ["--multi_gpu"]  # plain DDP; on CPU this runs gloo processes (`--cpu` would start one)
    engine_file = ENGINES_DIR / f"{dist.engine}.yaml"
    if not engine_file.is_file():
        raise UserError(f"distributed.engine: '{dist.engine}' has no config at {engine_file}")
    args = ["--config_file", str(engine_file)]
    ds_json = engine_file.with_suffix(".json")
    if ds_json.is_file():  # the YAML names it relative to itself; accelerate would resolve it from the cwd
        args += ["--deepspeed_config_file", str(ds_json)]
    return args


def accelerate_command(dist: Distributed, entry: str, stage_dir: Path, run_dir: Path, stage: str,
                       machine_rank: str | None = None, main_ip: str | None = None,
                       port: str | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... -m pipeline.worker ...` for one machine.

    Multi-node: every machine runs this same command with its own --machine_rank (machine_rank arg,
    else $MACHINE_RANK, else $SLURM_NODEID); the rank-0 host comes from main_ip, else
    distributed.main_process_ip, else $MAIN_PROCESS_IP (pipeline/slurm.py exports it from the job's
    first node); the port from port, else $MAIN_PROCESS_PORT, else distributed.main_process_port.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *engine_args(dist)]
    port = port or os.environ.get("MAIN_PROCESS_PORT", str(dist.main_process_port))
    cmd += ["--num_processes", str(dist.num_processes), "--num_machines", str(dist.num_machines),
            "--main_process_port", port, "--mixed_precision", dist.mixed_precision]
    if dist.num_machines > 1:
        rank = machine_rank or os.environ.get("MACHINE_RANK") or os.environ.get("SLURM_NODEID", "0")
        ip = main_ip or dist.main_process_ip or os.environ.get("MAIN_PROCESS_IP", "127.0.0.1")
        cmd += ["--machine_rank", rank, "--main_process_ip", ip, "--same_network"]
    cmd += ["-m", "pipeline.worker", "--entry", entry, "--stage", stage, "--stage-dir", str(stage_dir),
            "--run-dir", str(run_dir)]
    return cmd


NODE_RANK_VAR = "$SLURM_NODEID"  # expanded by the shell srun starts on each node


def launcher_command(dist: Distributed, entry: str, stage_dir: Path, run_dir: Path, stage: str) -> list[str]:
    """The command the runner starts. Under SLURM with several machines ($LIFECYCLE_SRUN set by the
    sbatch script of pipeline/slurm.py) one `accelerate launch` per node is started through srun, each
    with its node's rank; otherwise the local accelerate command."""
    srun = os.environ.get("LIFECYCLE_SRUN")
    if dist.num_machines == 1 or not srun:
        return accelerate_command(dist, entry, stage_dir, run_dir, stage)
    cmd = accelerate_command(dist, entry, stage_dir, run_dir, stage, machine_rank=NODE_RANK_VAR)
    line = " ".join(part if part == NODE_RANK_VAR else shlex.quote(part) for part in cmd)
    return [*shlex.split(srun), "bash", "-c", line]


def worker_env(dist: Distributed) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # One BLAS thread pool per process must not oversubscribe the cores (measured: 15-35x slower).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.num_processes)))
    if not shutil.which("nvidia-smi"):
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed probes for CUDA otherwise and warns
    # Workers import the stage entry the way this process did (entries may live beside the cwd).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
    return env


def run_distributed(dist: Distributed, entry: str, stage_dir: Path, run_dir: Path, stage: str) -> dict:
    cmd = launcher_command(dist, entry, stage_dir, run_dir, stage)
    result_path = Path(stage_dir) / "result.json"
    result_path.unlink(missing_ok=True)
    with open(Path(stage_dir) / "launch.log", "a") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=worker_env(dist))
        for line in proc.stdout:  # tee: the user sees progress, the log keeps it
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    if rc != 0 or not result_path.is_file():
        raise RuntimeError(f"accelerate launch exited with code {rc} (see {Path(stage_dir) / 'launch.log'})")
    return json.loads(result_path.read_text())


def describe(dist: Distributed, recipe_path: Path, stage: str, entry: str, run_dir: Path) -> str:
    """The exact command that runs the stage (printed by `lifecycle plan`)."""
    stage_dir = Path(run_dir) / f"{stage}.tmp"
    if dist.num_processes * dist.num_machines == 1:
        return f"in-process: {entry}(recipe={recipe_path}, out={stage_dir})"
    cmd = launcher_command(dist, entry, stage_dir, run_dir, stage)
    if cmd[1:3] == ["-m", "accelerate.commands.launch"]:
        cmd[0:3] = ["accelerate", "launch"]
    return shlex.join(cmd)
