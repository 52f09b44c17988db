"""`lifecycle slurm RECIPE --nodes N --gpus-per-node G`: one sbatch job per stage, chained with afterok.

    lifecycle slurm recipes/gpt2-124m-2x8.yaml --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00
    bash runs/<name>/slurm/submit.sh          # sbatch every job; each waits for the previous one (afterok)

Each job runs `python -m pipeline run RECIPE --stages <stage> <overrides>` on its first node. The runner
plans, prepares runs/<name>/<stage>.tmp and, with several nodes, starts one `accelerate launch` per
node through srun ($LIFECYCLE_SRUN, see pipeline/launch.py:launcher_command), each with
--machine_rank $SLURM_NODEID, --main_process_ip the job's first node and --main_process_port derived
from the job id; rank 0 writes the result and the runner the manifest, exactly as on one machine.

Every job carries the same overrides (each training stage's `distributed:` set to N nodes x G GPUs),
so all jobs compute the same fingerprints: a stage finished by an earlier job is skipped, not rerun.
The tokenizer always runs in one process, on one node.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.launch import accelerate_command
from pipeline.recipe import load_recipe
from pipeline.runner import Runner, specs_for
from pipeline.schema import DEFAULT_CHAIN

PORT_BASE, PORT_SPAN = 20000, 20000  # job-specific rendezvous port: two jobs on one node do not collide


def cluster_overrides(recipe, nodes: int, gpus_per_node: int) -> list[str]:
    """Dotted overrides that put every training stage on nodes x gpus_per_node processes: the run-level
    `distributed` (which declared stages without their own inherit; the tokenizer always runs in one
    process) and each default stage's own section."""
    run_level = recipe.distributed
    out = [f"distributed.engine={'ddp' if run_level.engine == 'none' else run_level.engine}",
           f"distributed.num_processes={nodes * gpus_per_node}", f"distributed.num_machines={nodes}",
           "distributed.main_process_ip=null"]
    for stage in (s.name for s in specs_for(recipe) if s.kind != "tokenizer" and s.name in DEFAULT_CHAIN):
        dist = recipe.distributed_for(stage)
        engine = "ddp" if dist.engine == "none" else dist.engine
        out += [f"{stage}.distributed.engine={engine}",
                f"{stage}.distributed.num_processes={nodes * gpus_per_node}",
                f"{stage}.distributed.num_machines={nodes}",
                f"{stage}.distributed.mixed_precision={dist.mixed_precision}",
                f"{stage}.distributed.main_process_ip=null",  # the job's first node, found at run time
                f"{stage}.distributed.main_process_port={dist.main_process_port}"]
    return out


def _header(name: str, stage: str, nodes: int, gpus: int, args, out_dir: Path) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}-{stage}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1"]  # one launcher per node; accelerate starts the GPU processes
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    for flag in ("partition", "time", "account"):
        if getattr(args, flag, None):
            lines.append(f"#SBATCH --{flag}={getattr(args, flag)}")
    lines.append(f"#SBATCH --output={out_dir}/%x-%j.out")
    return lines


def job_script(recipe, recipe_path: Path, stage: str, overrides: list[str], args, out_dir: Path) -> str:
    spec = next(s for s in specs_for(recipe) if s.name == stage)
    training = spec.distributed
    nodes, gpus = (args.nodes, args.gpus_per_node) if training else (1, 0)
    run = [sys.executable, "-m", "pipeline", "run", str(recipe_path.resolve()), "--stages", stage]
    lines = _header(recipe.name, stage, nodes, gpus, args, out_dir) + [
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
    ]
    if args.setup:
        lines.append(args.setup)
    lines += [
        'export MAIN_PROCESS_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"export MAIN_PROCESS_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))",
    ]
    if training and nodes > 1:
        lines.append('export LIFECYCLE_SRUN="srun --nodes=$SLURM_NNODES --ntasks-per-node=1 --kill-on-bad-exit=1"')
        run_dir = Path(recipe.output_dir) / recipe.name
        dist = recipe.distributed_for(stage)
        per_node = accelerate_command(dist, spec.entry, run_dir / f"{stage}.tmp", run_dir, stage,
                                      machine_rank="$SLURM_NODEID", main_ip="$MAIN_PROCESS_IP",
                                      port="$MAIN_PROCESS_PORT")
        per_node[0:3] = ["accelerate", "launch"]
        lines += ["# The runner below starts this on every node (the shell there expands the variables):",
                  "#   $LIFECYCLE_SRUN bash -c '" + " ".join(per_node) + "'"]
    lines.append(" \\\n    ".join([shlex.join(run[:5])] + [shlex.quote(o) for o in overrides] + [shlex.join(run[5:])]))
    return "\n".join(lines) + "\n"


def submit_script(jobs: list[tuple[str, str]]) -> str:
    lines = ["#!/bin/bash", "# Submits the stage jobs in order; each starts only after the previous one succeeded.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', "dep="]
    for stage, script in jobs:
        lines += [f'jid=$(sbatch --parsable ${{dep:+--dependency=afterok:$dep}} {script})',
                  f'echo "{stage}: job $jid"', "dep=$jid"]
    return "\n".join(lines) + "\n"


def write_scripts(recipe_path: Path, user_overrides: list[str], nodes: int, gpus_per_node: int, args,
                  requested: list[str] | None = None) -> Path:
    if nodes < 1 or gpus_per_node < 1:
        raise UserError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: expected positive integers")
    base = load_recipe(recipe_path, user_overrides)
    overrides = list(user_overrides) + cluster_overrides(base, nodes, gpus_per_node)
    recipe = load_recipe(recipe_path, overrides)
    items = Runner(recipe, recipe_path).plan(requested)
    blocked = [i for i in items if i.action == "missing-input"]
    if blocked:
        raise UserError(f"{blocked[0].spec.name}: {blocked[0].reason}")
    out_dir = (args.out or Path(recipe.output_dir) / recipe.name / "slurm").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for n, item in enumerate(i for i in items if i.action == "run"):
        script = f"{n + 1}-{item.spec.name}.sbatch"
        (out_dir / script).write_text(job_script(recipe, recipe_path, item.spec.name, overrides, args, out_dir))
        jobs.append((item.spec.name, script))
    submit = out_dir / "submit.sh"
    submit.write_text(submit_script(jobs))
    submit.chmod(0o755)
    skipped = [i.spec.name for i in items if i.action == "skip"]
    print(f"wrote {len(jobs)} job(s) to {out_dir}" + (f" (up to date, no job: {', '.join(skipped)})" if skipped else ""))
    print(f"submit: bash {submit}")
    return out_dir
