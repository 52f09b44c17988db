"""One task source for every stage: which sources a stage reads, how many prompts it draws, the tasks themselves.

    from stages.data.tasks.sources import load_tasks, stage_sources
    for spec in stage_sources(recipe, "rl"):                  # e.g. ["gym:basic_arithmetic", "arithmetic"]
        tasks = load_tasks(spec, n=64, seed=recipe.seed, split="train")

A spec is a line of a stage's `tasks:` list (stages/data/tasks/spec.py) or a bare built-in family (the
`families:` shorthand: a stage without `tasks:` reads builtin:<f> for each of its families, all six by default,
so recipes written before task sources draw exactly what they drew). What each stage reads:
- sft: `sft.tasks` (demonstrations, train split, when `sft.datasets` holds "builtin"/"tasks"); its held-out
  eval reads `eval.tasks`, else the same sources (test split);
- rm: `rm.tasks`, the rollout prompts (train split, drawn with seed + 1);
- rl: `rl.tasks` (train split); its evals before and after read `eval.tasks`, else the six built-in families plus
  the rl sources; the equal-compute control reads the sft sources;
- `lifecycle eval --suite chat`: as the sft eval.
A finite source (a file or hub split) gives min(n, what it holds) tasks, picked by a seeded shuffle; built-in
and gym sources generate n. `preflight` reads every source a stage will read before the stage writes
anything, so a missing file, a bad row, an unreachable hub id or an empty split stops the run with one line.
"""
from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from pathlib import Path

from pipeline.errors import UserError
from stages.data.tasks import FAMILIES, Task, make_tasks
from stages.data.tasks.spec import Source, parse_source


def source_of(spec: str | Source) -> Source:
    if isinstance(spec, Source):
        return spec
    try:
        return parse_source(spec)
    except ValueError as exc:
        raise UserError(f"task source {exc}") from None


def label_of(spec: str | Source) -> str:
    """The name a source's metrics carry (eval/acc/<label>)."""
    return source_of(spec).label


def load_tasks(spec: str | Source, n: int, seed: int, split: str) -> list[Task]:
    """n tasks (fewer when a finite source holds fewer) of one split, deterministic in (spec, n, seed, split)."""
    source = source_of(spec)
    if source.kind == "builtin":
        return make_tasks(source.name, n, seed, split)
    if source.kind == "gym" and "size" not in dict(source.params):
        from stages.data.tasks.gym import gym_tasks
        return gym_tasks(source, n, seed, split)
    tasks = _pool(source, split)
    if n > 0 and not tasks:
        raise UserError(f"task source '{source.spec}' has no {split} rows (an empty task set); expected at least one")
    picked = random.Random(f"{seed}:{source.label}:{split}").sample(range(len(tasks)), min(n, len(tasks)))
    return [tasks[i] for i in picked]


def _pool(source: Source, split: str) -> tuple[Task, ...]:
    """All tasks of one split of a finite source (a file, a hub split, a gym pool with size=)."""
    if source.kind == "gym":
        from stages.data.tasks.gym import gym_pool
        return gym_pool(source, split)
    from stages.data.tasks.rows import pool
    return pool(source, split)


def is_finite(spec: str | Source) -> bool:
    source = source_of(spec)
    return source.kind != "builtin" and (source.kind != "gym" or "size" in dict(source.params))


# ---------------------------------------------------------------- which sources each stage reads
def _own(cfg) -> list[str]:
    return list(cfg.tasks) if cfg.tasks is not None else list(cfg.families or FAMILIES)


def stage_sources(recipe, use: str) -> list[str]:
    """Specs for `use`: sft, rm, rl (training prompts), sft_eval / chat (held-out after SFT), rl_eval."""
    if use in ("sft", "rm", "rl"):
        return _own(getattr(recipe, use))
    if recipe.eval.tasks is not None:
        return list(recipe.eval.tasks)
    if use in ("sft_eval", "chat"):
        return _own(recipe.sft)
    if use == "rl_eval":
        specs = list(FAMILIES)
        return specs + [s for s in _own(recipe.rl) if label_of(s) not in {label_of(x) for x in specs}]
    raise ValueError(f"unknown task use {use!r}")


def sft_train_count(cfg, spec: str) -> int:
    """Demonstrations drawn from one sft source: builtin_train_per_family x its family_weights entry."""
    return round(cfg.builtin_train_per_family * cfg.family_weights.get(label_of(spec), 1.0))


def rm_train_count(cfg, n_sources: int) -> int:
    return -(-cfg.num_prompts // n_sources)


def rl_train_count(cfg, n_sources: int) -> int:
    return max(cfg.max_steps * cfg.prompts_per_step // n_sources, 64)


def stage_draws(recipe, stage: str) -> list[tuple[str, str, str, int]]:
    """(use, spec, split, n) for every draw the stage makes; [] for stages that read no tasks."""
    sft, ev = recipe.sft, recipe.eval
    demos = bool({"builtin", "tasks"} & set(sft.datasets))
    draws: list[tuple[str, str, str, int]] = []
    if stage == "sft":
        draws += [("train", s, "train", sft_train_count(sft, s)) for s in stage_sources(recipe, "sft") if demos]
        draws += [("eval", s, "test", sft.builtin_test_per_family) for s in stage_sources(recipe, "sft_eval")]
    elif stage == "rm":
        specs = stage_sources(recipe, "rm")
        draws += [("rollouts", s, "train", rm_train_count(recipe.rm, len(specs))) for s in specs]
    elif stage == "rl":
        specs = stage_sources(recipe, "rl")
        draws += [("train", s, "train", rl_train_count(recipe.rl, len(specs))) for s in specs]
        draws += [("eval", s, "test", ev.max_prompts_per_family) for s in stage_sources(recipe, "rl_eval")]
        if recipe.rl.control and demos:
            draws += [("control", s, "train", sft_train_count(sft, s)) for s in stage_sources(recipe, "sft")]
    return draws


# ---------------------------------------------------------------- before a stage runs, and `lifecycle plan`
@lru_cache(maxsize=256)
def _available(spec: str, split: str, seed: int) -> int | None:
    """Tasks a finite source holds in `split` (None for generated sources, after generating one to check)."""
    if not is_finite(spec):
        load_tasks(spec, 1, seed, split)
        return None
    return len(_pool(source_of(spec), split))


def preflight(recipe, stage: str) -> None:
    """Read every source the stage will read; UserError (one line) on anything that would stop it later."""
    for _, spec, split, n in stage_draws(recipe, stage):
        if n > 0 and _available(spec, split, recipe.seed) == 0:
            raise UserError(f"{stage}: task source '{spec}' has no {split} rows (an empty task set); "
                            f"expected at least one")


def task_files(recipe, stage: str) -> dict[str, str]:
    """Local task files the stage reads -> sha256 of their bytes (for the stage's fingerprint): editing a
    file reruns the stages that read it, as editing the recipe does."""
    out = {}
    for _, spec, _, _ in stage_draws(recipe, stage):
        source = source_of(spec)
        path = Path(source.name).expanduser()
        if source.local and path.is_file() and str(path) not in out:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def describe(recipe, stage: str) -> list[str]:
    """Plan lines: what the stage draws from each source (use, split, count, of how many a finite one holds;
    the source's metric label, its spec)."""
    lines = []
    for use, spec, split, n in stage_draws(recipe, stage):
        label, problem = label_of(spec), ""
        try:
            available = _available(spec, split, recipe.seed)
            count = f"{n} generated" if available is None else f"{min(n, available)} of {available}"
        except UserError as exc:
            count, problem = "?", f"  -- not readable here: {str(exc).removeprefix(spec + ': ')[:120]}"
        lines.append(f"{use:<8} {split:<5} {count:>14}  {label:<16} {spec}{problem}")
    return lines


def interleave(pools: list[list[Task]], n: int) -> list[Task]:
    """Round-robin over pools (one from each in turn, skipping exhausted ones), the first n."""
    longest = max((len(p) for p in pools), default=0)
    out = [p[i] for i in range(longest) for p in pools if i < len(p)]
    return out[:n]
