"""The `lifecycle` commands: one module per command, each with `add_arguments(parser)` and `main(args) -> int`.

pipeline/cli.py lists them and imports only the one being run, so `lifecycle plan` does not pay for
torch. This package holds the argument groups several commands share.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def recipe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML, e.g. recipes/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pretrain.max_steps=50")


def sampling_arguments(p: argparse.ArgumentParser, n: int = 1) -> None:
    p.add_argument("--n", type=int, default=n, help="samples to draw")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=None, help="fix the seed (default: stochastic)")


def stage_list(arg: str | None) -> list[str] | None:
    """`--stages pretrain,sft` -> ["pretrain", "sft"]; None = all."""
    return [s.strip() for s in arg.split(",") if s.strip()] if arg else None
