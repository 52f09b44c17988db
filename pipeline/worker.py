"""The per-process entry point under `accelerate launch` (see pipeline/launch.py).

    accelerate launch ... -m pipeline.worker --entry stages.pretrain:run --stage pretrain \
        --stage-dir runs/tiny/pretrain.tmp --run-dir runs/tiny

Reads config.yaml and inputs.json that the runner wrote into the stage dir; rank 0 writes result.json.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pipeline.artifacts import write_json_atomic
from pipeline.launch import call_stage
from pipeline.recipe import load_recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pipeline.worker")
    parser.add_argument("--entry", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--stage-dir", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.stage_dir / "config.yaml")
    inputs = json.loads((args.stage_dir / "inputs.json").read_text())
    result = call_stage(recipe, args.entry, args.stage, inputs, args.stage_dir, args.run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(args.stage_dir / "result.json", result)


if __name__ == "__main__":
    main()
