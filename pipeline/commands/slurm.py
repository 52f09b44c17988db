"""`lifecycle slurm RECIPE --nodes N --gpus-per-node G`: one sbatch job per stage, chained with afterok."""
from __future__ import annotations

from pathlib import Path

from pipeline.commands import recipe_arguments, stage_list
from pipeline.slurm import write_scripts


def add_arguments(p) -> None:
    recipe_arguments(p)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--out", type=Path, default=None, help="script dir (default: runs/<name>/slurm)")
    p.add_argument("--stages", default=None)
    p.add_argument("--partition", default=None, help="#SBATCH --partition")
    p.add_argument("--time", default=None, help="#SBATCH --time, e.g. 12:00:00")
    p.add_argument("--account", default=None, help="#SBATCH --account")
    p.add_argument("--setup", default=None, help="shell line run first in every job, e.g. 'module load cuda'")


def main(args) -> int:
    write_scripts(args.recipe, args.overrides, args.nodes, args.gpus_per_node, args, stage_list(args.stages))
    return 0
