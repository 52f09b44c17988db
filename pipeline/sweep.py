"""Sweeps: one recipe at every point of the cartesian product of comma lists of overrides.

    lifecycle sweep recipes/tiny.yaml seed=1337,7,42 [rm.k=4,8 ...] [--stages rm] [--name NAME]

Each point is its own run: the recipe with the point's overrides, named
`<recipe name>-<key>_<value>-...` (e.g. tiny-seed_7: characters the schema's run-name pattern
`^[A-Za-z0-9._-]{1,100}$` does not allow, `=` among them, become `_`; a name over 100 characters is cut
and ends in a hash of the whole), with `tracking.group` set to the sweep's name, so every point lands in
one W&B group. Points run one after another through the normal Runner, so a finished point is skipped
as `lifecycle run` skips it, and a second sweep runs only what is missing or stale. A point whose stage
crashes does not stop the others; the sweep then exits 1 naming it. Every point's recipe is validated
before anything runs. Afterwards pipeline/sweep_report.py writes runs/<sweep name>/sweep.md + sweep.json.

The sweep's name is `--name`, else `<recipe name>-sweep-<key>-<key>...` (the keys given, in order).
A key with one value is a fixed override of every point (and still part of the point names).
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StageFailed, UserError
from pipeline.recipe import load_recipe
from pipeline.runner import Runner, StageSpec
from pipeline.schema import Recipe

NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 100                                   # the schema's run-name pattern allows 1-100 characters
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
RESERVED = ("name", "tracking.group")            # set per point by the sweep itself


@dataclass(frozen=True)
class Axis:
    key: str                    # dotted recipe key, e.g. "seed" or "rm.k"
    values: tuple[str, ...]     # raw override values as typed (parsed as YAML by load_recipe)


@dataclass(frozen=True)
class Point:
    name: str                              # the point's run name (runs/<name>/)
    values: tuple[tuple[str, str], ...]    # (key, value) per axis, in axis order

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values]


@dataclass
class SweepResult:
    name: str                   # the sweep's name: W&B group and runs/<name>/
    points: list[Point]
    recipes: dict[str, Recipe]  # point name -> its validated recipe
    failed: dict[str, StageFailed]  # point name -> its crash (the message names the stage and its log)


def split_values(text: str) -> list[str]:
    """"1,2,[a,b]" -> ["1", "2", "[a,b]"]: commas inside brackets, braces or quotes do not split."""
    out, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(current)
            current = ""
            continue
        current += ch
    return out + [current]


def parse_axes(items: list[str]) -> list[Axis]:
    """`["seed=1,2", "rm.k=4"]` -> axes; a malformed item is a UserError naming it."""
    if not items:
        raise UserError("sweep: give at least one KEY=V1,V2,... (e.g. seed=1337,7,42)")
    axes: list[Axis] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not KEY.match(key):
            raise UserError(f"sweep: '{item}': expected KEY=V1,V2,... with a dotted recipe key, e.g. seed=1337,7,42")
        if key in RESERVED:
            raise UserError(f"sweep: '{key}' is set per point by the sweep; name the sweep with --name")
        if any(a.key == key for a in axes):
            raise UserError(f"sweep: '{key}' is given twice; list all its values once: {key}=V1,V2,...")
        values = [v.strip() for v in split_values(text)]
        if any(not v for v in values):
            raise UserError(f"sweep: '{item}': an empty value (expected {key}=V1,V2,... with no empty item)")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise UserError(f"sweep: '{item}': value '{twice[0]}' is listed twice")
        axes.append(Axis(key, tuple(values)))
    return axes


def safe_name(text: str) -> str:
    """A run name the schema accepts: odd characters -> '_', over 100 characters cut and suffixed with a hash."""
    name = NAME_CHARS.sub("_", text)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return name


def expand(recipe_name: str, axes: list[Axis]) -> list[Point]:
    """Every combination of the axes' values (the first axis varies slowest), each named after its values."""
    points = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        values = tuple((axis.key, value) for axis, value in zip(axes, combo))
        points.append(Point(safe_name(recipe_name + "".join(f"-{k}={v}" for k, v in values)), values))
    names = [p.name for p in points]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise UserError(f"sweep: two points get the run name '{clash}' once odd characters become '_'; "
                        "give values that differ in letters, digits, '.', '_' or '-'")
    return points


def default_name(recipe_name: str, axes: list[Axis]) -> str:
    return safe_name(f"{recipe_name}-sweep-" + "-".join(axis.key for axis in axes))


def plan_sweep(recipe_path: Path, items: list[str], name: str | None = None) -> SweepResult:
    """Parse the axes, name the sweep and its points, and validate every point's recipe (nothing runs)."""
    base = load_recipe(recipe_path)
    axes = parse_axes(items)
    sweep = safe_name(name) if name else default_name(base.name, axes)
    points = expand(base.name, axes)
    if sweep in {p.name for p in points}:
        raise UserError(f"sweep: the sweep's name '{sweep}' is also a point's run name; pick another --name")
    recipes = {p.name: load_recipe(recipe_path, p.overrides + [f"name={p.name}", f"tracking.group={sweep}"])
               for p in points}
    return SweepResult(sweep, points, recipes, {})


def run_sweep(recipe_path: Path, items: list[str], requested: list[str] | None = None, name: str | None = None,
              stages: tuple[StageSpec, ...] | None = None, debug: bool = False, log=print) -> SweepResult:
    """Run every point (skipping what is up to date); a crashed point is recorded and the next one runs."""
    sweep = plan_sweep(recipe_path, items, name)
    if requested:  # an unknown stage name fails before any point runs
        Runner(sweep.recipes[sweep.points[0].name], recipe_path, stages=stages).closure(requested)
    for i, point in enumerate(sweep.points, 1):
        log(f"sweep {sweep.name} | point {i}/{len(sweep.points)}: {point.name} ({', '.join(point.overrides)})")
        runner = Runner(sweep.recipes[point.name], recipe_path, stages=stages, debug=debug)
        try:
            runner.run(requested)
        except StageFailed as exc:
            sweep.failed[point.name] = exc
            log(f"sweep {sweep.name} | point {point.name} failed: {exc}")
    return sweep


def stage_names(recipe: Recipe, stages: tuple[StageSpec, ...] | None) -> list[str]:
    """The stages a point's report covers: the given specs', else the recipe's chain."""
    return [s.name for s in stages] if stages is not None else [s["name"] for s in recipe.chain()]
