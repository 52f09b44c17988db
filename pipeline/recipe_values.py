"""Value types and name checks of the recipe schema: bounded strings, task source specs, and the names a
recipe can hold (families, reward parts, rankers, benchmarks), each refused at load with the closest name."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, model_validator

from pipeline.errors import BadValue
from pipeline.files import CONTROL
from stages.data.tasks import FAMILIES
from stages.data.tasks.spec import check_task_list, parse_source

_CONTROL_IN_NAME = re.compile(r"[\x00-\x1f\x7f]")
BIG = 10**9            # counts (rows, prompts, tokens) beyond this are typos, not plans
STEPS = 10**8          # optimizer/RL steps and their intervals
GEN_TOKENS = 1 << 17   # generation budgets and sequence lengths (131,072 tokens)


def _no_control(pattern: re.Pattern):
    def check(value: str) -> str:
        bad = pattern.search(value)
        if bad is not None:
            raise ValueError(f"expected text without control characters (found 0x{ord(bad.group()):02x})")
        return value
    return AfterValidator(check)


def _not_dots(value: str) -> str:
    if set(value) == {"."}:
        raise ValueError("expected a run name, not a path such as '.' or '..'")
    return value


Name = Annotated[str, Field(max_length=256), _no_control(_CONTROL_IN_NAME)]     # ids, fields, families, hosts
PathText = Annotated[str, Field(max_length=4096), _no_control(_CONTROL_IN_NAME)]  # a file, glob, dir or hub id
Prose = Annotated[str, Field(max_length=100_000), _no_control(CONTROL)]         # free text (newlines allowed)
Weight = Annotated[float, Field(ge=0, le=1000)]

REWARD_PARTS = ("verifier", "format", "rm")    # reward/combine.py's built-in parts; others are 'module:function'
RANKERS = ("verifier", "judge", "human")        # reward/ranking.py's ranking sources
BENCHMARK_NAMES = ("gsm8k", "arc_easy", "arc_challenge", "hellaswag", "mmlu")  # stages/eval/benchmarks.py


def known(names, allowed: tuple[str, ...], what: str):
    """names unchanged if every one is in `allowed`; else a ValueError naming the first stranger and the
    closest allowed name. (An empty `names` is returned as it is.)"""
    for name in names:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.5)
            hint = f" — did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(allowed)}"
            raise BadValue(f"unknown {what} '{name}'{hint}")
    return names


def check_reward_parts(rewards: dict[str, float]) -> dict[str, float]:
    """Reward names are built-in parts or 'module:function' (imported when the stage builds the mix)."""
    known([n for n in rewards if ":" not in n], REWARD_PARTS, "reward (or 'module:function')")
    for name in rewards:
        module, _, func = name.partition(":")
        if ":" in name and not (module and func):
            raise BadValue(f"reward '{name}': expected 'module:function'")
    return rewards


def check_family_weights(weights: dict[str, float]) -> dict[str, float]:
    known(list(weights), FAMILIES, "family")
    for family, w in weights.items():
        if not 0 <= w <= 10:
            raise BadValue(f"weight of '{family}' is {w}; expected 0 to 10")
    return weights


Families = Annotated[list[str], AfterValidator(lambda v: known(v, FAMILIES, "family"))]
Rankers = Annotated[list[str], AfterValidator(lambda v: known(v, RANKERS, "ranker"))]
Benchmarks = Annotated[list[str], AfterValidator(lambda v: known(v, BENCHMARK_NAMES, "benchmark"))]
BenchmarkFiles = Annotated[dict[Name, PathText], AfterValidator(lambda v: (known(list(v), BENCHMARK_NAMES, "benchmark"), v)[1])]


def _task_spec(spec: str) -> str:
    parse_source(spec)  # ValueError names what is unknown, with a close match
    return spec


def _family(name: str) -> str:
    if name not in FAMILIES:
        parse_source(f"builtin:{name}")  # the unknown-family message
    return name


def _task_list(specs: list[str]) -> list[str]:
    check_task_list(specs, "tasks")
    return specs


# A task source line (docs/tasks.md): builtin:<family>, gym:<dataset>[?k=v&...], gsm8k|math|qa|arc|mmlu|hellaswag:<file or hub id>
TaskSpec = Annotated[str, AfterValidator(_task_spec)]
TaskList = Annotated[list[TaskSpec], AfterValidator(_task_list)]
Family = Annotated[str, AfterValidator(_family)]


class TaskStage(BaseModel):
    """Checks shared by the stages with `tasks` and `families` (the built-in shorthand)."""

    @model_validator(mode="after")
    def _tasks_or_families(self):
        if self.tasks is not None and self.families:
            raise BadValue("set tasks or families, not both (families: [f] is the shorthand for tasks: [builtin:f])")
        return self


# ---------------------------------------------------------------- run-level groups


def looks_like_stage(ref: str, names: list[str]) -> bool:
    """A `from:` that is neither a stage name nor an existing path: a hub id ("org/model", "gpt2") unless it is
    close to a stage name (then it is most likely that stage, mistyped)."""
    if "/" in ref or Path(ref).expanduser().exists():
        return False
    return bool(difflib.get_close_matches(ref, names, n=1, cutoff=0.6))
