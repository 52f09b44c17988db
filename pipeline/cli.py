"""`lifecycle` / `python -m pipeline`: the one command-line entry point.

    lifecycle run recipes/tiny.yaml [KEY=VALUE ...] [--stages pretrain,sft] [--force sft]
    lifecycle plan|status recipes/tiny.yaml
    lifecycle tokenize "text" [--tokenizer DIR]      lifecycle sample CKPT --prompt "..."
    lifecycle chat CKPT [--system "..."]              lifecycle eval CKPT [--suite NAME]
    lifecycle report RECIPE                           lifecycle rollouts|rank RECIPE
    lifecycle arena CKPT_A CKPT_B ...                 lifecycle slurm RECIPE --nodes N --gpus-per-node G
    lifecycle probe regurgitation CKPT

Bad input prints one line on stderr and exits 2 (add --debug for the traceback); a crashed stage
exits 1 naming the stage and its log.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import StageFailed, UserError
from pipeline.logging_setup import quiet_libraries


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML, e.g. recipes/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pretrain.max_steps=50")


def _sampling_args(p: argparse.ArgumentParser, n: int = 1) -> None:
    p.add_argument("--n", type=int, default=n, help="samples to draw")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=None, help="fix the seed (default: stochastic)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifecycle", description="raw text -> chat assistant, one recipe")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run stages (and whatever they need) of a recipe")
    _recipe_args(p)
    p.add_argument("--stages", default=None, help="comma-separated: tokenizer,pretrain,sft,rm,rl (default all)")
    p.add_argument("--force", action="append", default=[], help="rerun this stage even if up to date")
    p = sub.add_parser("plan", help="what `run` would do, with launch commands")
    _recipe_args(p)
    p.add_argument("--stages", default=None)
    p = sub.add_parser("status", help="table of stages: state, key metrics, wall time, path")
    _recipe_args(p)

    p = sub.add_parser("tokenize", help="show the tokens of a text")
    p.add_argument("text")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: runs/tiny/tokenizer)")
    p = sub.add_parser("sample", help="sample from any HF causal LM dir")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="")
    _sampling_args(p)
    p = sub.add_parser("probe", help="model probes")
    p.add_argument("probe", choices=["regurgitation"])
    p.add_argument("checkpoint")
    p.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"), help="recipe whose data to probe")
    p.add_argument("--documents", type=int, default=50)
    p.add_argument("--prefix-tokens", type=int, default=32)
    p.add_argument("--continue-tokens", type=int, default=32)
    p = sub.add_parser("chat", help="multi-turn terminal chat with a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--system", default=None, help="system prompt (default: the model's built-in one)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--suite", default="auto", help="auto|base|chat|rm|rl|gsm8k|arc_easy|arc_challenge|hellaswag|mmlu|benchmarks (eval.benchmarks)")
    p.add_argument("--recipe", type=Path, default=None, help="take eval settings from this recipe")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data-file", default=None, help="local jsonl/parquet for a benchmark suite")
    p.add_argument("--reference", default=None, help="rl suite: reference policy dir for KL (default: its input)")
    p.add_argument("--reward-model", default=None, help="rl suite: RM dir for the mean RM reward")
    p.add_argument("--out", default=None, help="also write the metrics as JSON here")
    p = sub.add_parser("report", help="write runs/<name>/report.md with plots")
    _recipe_args(p)
    p = sub.add_parser("rollouts", help="sample K completions per prompt from the SFT policy")
    _recipe_args(p)
    p = sub.add_parser("rank", help="ranking web page for people (127.0.0.1)")
    _recipe_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rollouts", default=None, help="rollouts JSONL (default: the recipe's)")
    p.add_argument("--out", default=None, help="rankings JSONL (default: runs/<name>/rankings.jsonl)")
    p = sub.add_parser("arena", help="pairwise comparisons of checkpoints, Bradley-Terry/Elo scores")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--judge", default="verifier", help="verifier | rm:<RM dir> | human")
    p.add_argument("--recipe", type=Path, default=Path("recipes/tiny.yaml"))
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the answers (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's eval.max_new_tokens")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap rounds for the 95%% intervals")
    p = sub.add_parser("slurm", help="write sbatch scripts: one job per stage, chained with afterok")
    _recipe_args(p)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--out", type=Path, default=None, help="script dir (default: runs/<name>/slurm)")
    p.add_argument("--stages", default=None)
    p.add_argument("--partition", default=None, help="#SBATCH --partition")
    p.add_argument("--time", default=None, help="#SBATCH --time, e.g. 12:00:00")
    p.add_argument("--account", default=None, help="#SBATCH --account")
    p.add_argument("--setup", default=None, help="shell line run first in every job, e.g. 'module load cuda'")
    return parser


# command -> "module:function(args)"; imported lazily so `lifecycle plan` starts fast.
COMMANDS = {
    "run": "pipeline.commands:run_cmd", "plan": "pipeline.commands:plan_cmd",
    "status": "pipeline.commands:status_cmd", "tokenize": "stages.tokenizer:tokenize_cli",
    "sample": "stages.sampling:sample_cli", "probe": "stages.sampling:probe_cli",
    "chat": "stages.chat:chat_cli", "eval": "stages.eval:eval_cli", "report": "pipeline.report:report_cli",
    "rollouts": "stages.rollout:rollouts_cli", "rank": "reward.ranking_page:rank_cli",
    "arena": "stages.arena:arena_cli", "slurm": "pipeline.slurm:slurm_cli",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like parse_args, but dotted overrides may also come after options (`run R --force sft a.b=1`).

    argparse fills a positional list once: overrides typed after an option would otherwise be
    rejected as unrecognized, which is the order people naturally write.
    """
    parser = build_parser()
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
    from pipeline.launch import load_entry
    try:
        rc = load_entry(COMMANDS[args.command])(args)
        return int(rc or 0)
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
