"""`lifecycle` / `python -m pipeline`: the one command-line entry point.

    lifecycle run recipes/tiny.yaml [KEY=VALUE ...] [--stages pretrain,sft] [--force sft]
    lifecycle sweep recipes/tiny.yaml seed=1337,7,42 [KEY=V1,V2 ...] [--stages rm]
    lifecycle plan|status recipes/tiny.yaml
    lifecycle tokenize "text" [--tokenizer DIR]      lifecycle sample CKPT --prompt "..."
    lifecycle chat CKPT [--system "..."]              lifecycle eval CKPT [--suite NAME]
    lifecycle report RECIPE                           lifecycle rollouts|rank RECIPE
    lifecycle arena CKPT_A CKPT_B ...                 lifecycle slurm RECIPE --nodes N --gpus-per-node G
    lifecycle probe regurgitation CKPT
    lifecycle serve CKPT [CKPT...]                    lifecycle export CKPT --format gguf|hf --out PATH

Each command is a module of pipeline/commands/ holding its arguments and its handler. Only the module
of the command being run is imported, so `lifecycle plan` answers before torch would have loaded.
Bad input prints one line on stderr and exits 2 (add --debug for the traceback); a crashed stage
exits 1 naming the stage and its log.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import StageFailed, UserError
from pipeline.logging_setup import quiet_libraries

# command -> (module in pipeline/commands, one-line help)
COMMANDS = {
    "run": ("run", "run stages (and whatever they need) of a recipe"),
    "sweep": ("sweep", "run a recipe at every combination of comma-listed overrides; combined report"),
    "plan": ("plan", "what `run` would do, with launch commands"),
    "status": ("status", "table of stages: state, key metrics, wall time, path"),
    "tokenize": ("tokenize", "show the tokens of a text"),
    "sample": ("sample", "sample from any HF causal LM dir"),
    "probe": ("probe", "model probes"),
    "chat": ("chat", "multi-turn terminal chat with a checkpoint"),
    "eval": ("eval", "evaluate a checkpoint"),
    "report": ("report", "write runs/<name>/report.md with plots"),
    "rollouts": ("rollouts", "sample K completions per prompt from the SFT policy"),
    "rank": ("rank", "ranking web page for people (127.0.0.1)"),
    "arena": ("arena", "pairwise comparisons of checkpoints, Bradley-Terry/Elo scores"),
    "slurm": ("slurm", "write sbatch scripts: one job per stage, chained with afterok"),
    "serve": ("serve", "OpenAI-compatible API, browser chat and battle mode for checkpoints (127.0.0.1)"),
    "export": ("export", "write a checkpoint as GGUF (llama.cpp, LM Studio, Ollama) or a clean HF dir"),
}


def command_module(name: str):
    return importlib.import_module(f"pipeline.commands.{COMMANDS[name][0]}")


def _chosen(argv: list[str]) -> str | None:
    """The command word of argv (the first argument that is not an option), if it names a command."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Every command is listed; only the chosen one's module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="lifecycle", description="raw text -> chat assistant, one recipe")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = _chosen(argv)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            command_module(name).add_arguments(p)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like parse_args, but dotted overrides may also come after options (`run R --force sft a.b=1`).

    argparse fills a positional list once: overrides typed after an option would otherwise be
    rejected as unrecognized, which is the order people naturally write.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()  # off a terminal (make all > log, CI, SLURM): no library progress bars
    try:
        return int(command_module(args.command).main(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lifecycle tokenize ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
