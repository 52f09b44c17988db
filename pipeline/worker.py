"""The per-process entry point under `accelerate launch` (see pipeline/launch.py).

    accelerate launch ... -m pipeline.worker --entry stages.pretrain:run --stage pretrain \
        --stage-dir runs/tiny/pretrain.tmp --run-dir runs/tiny

Reads config.yaml and inputs.json that the runner wrote into the stage dir; rank 0 writes result.json.
The process group is set up here, before the stage builds its Accelerator (accelerate keeps one
shared state per process, so the stage's `Accelerator()` joins this group).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState

from pipeline.artifacts import write_json_atomic
from pipeline.launch import call_stage
from pipeline.recipe import load_recipe


def init_process_group() -> None:
    """Join the launcher's process group before the stage does.

    Why: on a machine without GPUs accelerate 1.15 sees no backend for a plain `Accelerator()` under
    `--multi_gpu` or DeepSpeed, and then reports a world of 1 on every rank (each rank silently trains
    alone). Starting the shared state here with gloo (cpu=True for DDP, backend="gloo" for DeepSpeed,
    which must not be told cpu=True or it drops DeepSpeed) makes every stage's Accelerator join the
    real group. On GPUs accelerate's own choice (nccl) is kept.
    """
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        PartialState(backend="gloo")
    else:
        PartialState(cpu=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pipeline.worker")
    parser.add_argument("--entry", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--stage-dir", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.stage_dir / "config.yaml")
    inputs = json.loads((args.stage_dir / "inputs.json").read_text())
    init_process_group()
    try:
        reads = json.loads((args.stage_dir / "reads.json").read_text()) if (args.stage_dir / "reads.json").is_file() \
            else None
        result = call_stage(recipe, args.entry, args.stage, inputs, args.stage_dir, args.run_dir, reads)
        if int(os.environ.get("RANK", "0")) == 0:
            write_json_atomic(args.stage_dir / "result.json", result)
    finally:
        shutdown_process_group()


def shutdown_process_group() -> None:
    """Leave the group explicitly: a gloo group torn down at interpreter exit can abort a rank
    ("terminate called without an active exception") after the work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
