"""Chain the stages: tokenizer -> pretrain -> sft -> rm -> rl, make-style.

For each requested stage the runner works out what it needs (upstream stages or `from:` models),
the fingerprint it would have, and whether a finished artifact with that fingerprint (and built from
the current upstream artifacts) already exists. Missing or stale upstream stages run first.

Each stage runs into runs/<name>/<stage>.tmp/ and is renamed to runs/<name>/<stage>/ once its
manifest (written last) is complete. A .tmp dir with the same fingerprint is kept, so a killed stage
resumes from its own checkpoints.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from pipeline import artifacts, launch
from pipeline.errors import StageFailed, UserError
from pipeline.recipe import RecipeView, recipe_to_dict
from pipeline.schema import Distributed, Recipe


@dataclass(frozen=True)
class StageSpec:
    name: str
    entry: str                                  # "module:function" implementing run(cfg, inputs, ctx)
    config_keys: tuple[str, ...]                # recipe sections the stage reads: fingerprinted, and all it can see
    inputs: Callable[[Recipe], dict[str, str]]  # role -> upstream stage name, or "ext:<path or hub id>"
    distributed: bool = True                    # False: always one process (the tokenizer trains on one CPU)
    kind: str = ""                              # tokenizer | pretrain | sft | dpo | rm | rl; "" = the name
    check: str | None = None                    # "module:function(recipe)" run before anything is written


@dataclass(frozen=True)
class Kind:
    """What every stage of one kind shares: its entry point, the sections it reads, the role of its model input."""
    entry: str
    reads: tuple[str, ...]
    role: str                    # input role of the model it starts from ("" for the tokenizer)
    distributed: bool = True
    check: str | None = None     # "module:function(recipe)" run before anything is written


DATA_CHECK = "stages.data.sources:preflight"  # local data files read (and small corpora split) up front
TASK_CHECK = "stages.data.tasks.sources:preflight"  # every task source a stage draws from, read up front
TASK_FILES = "stages.data.tasks.sources:task_files"  # local task files a stage reads -> hashes of their bytes
KINDS = {
    "tokenizer": Kind("stages.tokenizer:run", ("seed", "data", "tokenizer"), "", distributed=False, check=DATA_CHECK),
    "pretrain": Kind("stages.pretrain:run", ("seed", "data", "model", "pretrain", "eval"), "model", check=DATA_CHECK),
    "sft": Kind("stages.sft:run", ("seed", "sft", "eval", "data"), "model"),   # data: the facts its knowledge data asks about
    "dpo": Kind("stages.dpo:run", ("seed", "dpo", "eval"), "model"),
    "rm": Kind("stages.reward_model:run", ("seed", "rm", "eval"), "model"),
    # rl reads sft too: its equal-compute control trains with the sft section, PPO's ptx term uses sft.max_length
    "rl": Kind("stages.rl:run", ("seed", "rl", "eval", "sft"), "policy"),
}
MAKES_MODELS = ("pretrain", "sft", "dpo", "rl")              # kinds whose output a later stage can start from
DEFAULT_UPSTREAM = {"pretrain": "tokenizer", "sft": "pretrain", "rm": "sft", "rl": "sft"}


def _latest(recipe: Recipe, before: list[str], kinds: tuple[str, ...]) -> str | None:
    """The last stage in `before` of one of `kinds`."""
    return next((n for n in reversed(before) if recipe.kind_of(n) in kinds), None)


def stage_inputs(recipe: Recipe, stage: str, before: list[str]) -> dict[str, str]:
    """role -> upstream stage name or "ext:<dir or hub id>", from `from:` or the chain's defaults."""
    kind, ref = recipe.kind_of(stage), recipe.from_of(stage)
    if kind == "tokenizer":
        return {}
    names = [s["name"] for s in recipe.chain()]
    if kind == "pretrain" and not ref:
        return {"tokenizer": _latest(recipe, before, ("tokenizer",)) or "tokenizer"}
    if ref:
        source = ref if ref in names else f"ext:{ref}"
    else:
        source = DEFAULT_UPSTREAM[stage] if stage in DEFAULT_UPSTREAM else _latest(recipe, before, MAKES_MODELS)
    inputs = {KINDS[kind].role: source or DEFAULT_UPSTREAM[kind]}
    if kind == "rl":
        cfg = recipe.section_of(stage)
        if cfg.algorithm == "ppo" or "rm" in cfg.rewards:
            inputs["reward_model"] = _latest(recipe, before, ("rm",)) or "rm"
    return inputs


def specs_for(recipe: Recipe) -> tuple[StageSpec, ...]:
    """The recipe's stages in run order (the default five unless `stages:` declares a chain)."""
    chain = [s["name"] for s in recipe.chain()]
    specs = []
    for i, name in enumerate(chain):
        kind = KINDS[recipe.kind_of(name)]
        specs.append(StageSpec(name, kind.entry, kind.reads,
                               lambda r, name=name, before=tuple(chain[:i]): stage_inputs(r, name, list(before)),
                               kind.distributed, recipe.kind_of(name), kind.check))
    return tuple(specs)


STAGES: tuple[StageSpec, ...] = specs_for(Recipe(name="default"))
STAGE_NAMES = tuple(s.name for s in STAGES)


@dataclass
class PlanItem:
    spec: StageSpec
    action: str                 # "run" | "skip" | "missing-input"
    reason: str
    fingerprint: str
    inputs: dict[str, dict]     # role -> {"path", "fingerprint", "run_id", "stage"}
    command: str


class Runner:
    def __init__(self, recipe: Recipe, recipe_path: Path, stages: tuple[StageSpec, ...] | None = None,
                 debug: bool = False):
        self.recipe, self.recipe_path, self.debug = recipe, Path(recipe_path), debug
        stages = specs_for(recipe) if stages is None else stages
        self.specs = {s.name: s for s in stages}
        self.order = [s.name for s in stages]
        self.run_dir = Path(recipe.output_dir) / recipe.name

    # ------------------------------------------------------------------ planning
    def closure(self, requested: list[str]) -> list[str]:
        """Requested stages plus everything upstream of them, in pipeline order."""
        for name in requested:
            if name not in self.specs:
                raise UserError(f"--stages: unknown stage '{name}'; expected some of {', '.join(self.order)}")
        wanted: set[str] = set()
        stack = list(requested)
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            stack += [src for src in self.specs[name].inputs(self.recipe).values() if not src.startswith("ext:")]
        return [n for n in self.order if n in wanted]

    def stage_config(self, spec: StageSpec) -> dict:
        """The recipe sections that define the stage's result. How it is launched (`distributed`)
        is left out: the same stage on 1 or 8 processes computes the same thing."""
        full = recipe_to_dict(self.recipe)
        config = {key: full[key] for key in spec.config_keys}
        if spec.kind in config and spec.name != spec.kind:  # a declared stage: its own section, not the default one
            config[spec.kind] = self.recipe.section_of(spec.name).model_dump(mode="json", by_alias=True)
        for section in config.values():
            if isinstance(section, dict):
                section.pop("distributed", None)
        files = launch.load_entry(TASK_FILES)(self.view(spec), spec.kind or spec.name)
        if files:  # local task files are read like recipe sections: their contents are part of the stage
            config["task_files"] = files
        return config

    def view(self, spec: StageSpec) -> RecipeView:
        """The whole recipe as this stage names its sections (a declared stage's own section under its kind)."""
        return RecipeView(self.recipe, tuple(type(self.recipe).model_fields), spec.name)

    def distributed_for(self, spec: StageSpec) -> Distributed:
        return self.recipe.distributed_for(spec.name) if spec.distributed else Distributed()

    def plan(self, requested: list[str] | None = None, force: tuple[str, ...] = ()) -> list[PlanItem]:
        names = self.closure(requested or self.order)
        items: dict[str, PlanItem] = {}
        for name in names:
            spec = self.specs[name]
            inputs, missing = self._resolve_inputs(spec, items)
            fp = artifacts.fingerprint(self.stage_config(spec), {k: v["fingerprint"] for k, v in inputs.items()})
            manifest = artifacts.read_manifest(self.run_dir / name)
            if missing:
                action, reason = "missing-input", missing
            elif name in force:
                action, reason = "run", "forced"
            elif manifest is None:
                action, reason = "run", "not built yet"
            elif manifest.get("fingerprint") != fp:
                action, reason = "run", "config, upstream or code changed"
            elif any(items[v["stage"]].action == "run" for v in inputs.values() if v.get("stage") in items):
                action, reason = "run", "upstream reruns"
            elif any(v.get("run_id") != manifest.get("inputs", {}).get(k, {}).get("run_id") for k, v in inputs.items()):
                action, reason = "run", "upstream artifact was rebuilt"
            else:
                action, reason = "skip", "up to date"
            command = launch.describe(self.distributed_for(spec), self.recipe_path, name, spec.entry, self.run_dir)
            items[name] = PlanItem(spec, action, reason, fp, inputs, command)
        return [items[n] for n in names]

    def _resolve_inputs(self, spec: StageSpec, planned: dict[str, PlanItem]) -> tuple[dict, str]:
        inputs, missing = {}, ""
        for role, src in spec.inputs(self.recipe).items():
            if src.startswith("ext:"):
                ref = src[4:]
                path = Path(ref).expanduser()
                if not path.exists() and (ref.startswith(("/", ".", "~")) or ref.count("/") > 1):
                    missing = f"{spec.name}.from: '{ref}' does not exist (expected an HF model dir or hub id)"
                inputs[role] = {"path": ref, "fingerprint": artifacts.external_fingerprint(ref), "run_id": None}
                continue
            up = planned.get(src)
            manifest = artifacts.read_manifest(self.run_dir / src)
            if up is not None and up.action == "run":
                inputs[role] = {"stage": src, "path": str(self.run_dir / src), "fingerprint": up.fingerprint,
                                "run_id": "pending"}
            elif manifest is not None:
                inputs[role] = {"stage": src, "path": str(self.run_dir / src),
                                "fingerprint": manifest["fingerprint"], "run_id": manifest.get("run_id")}
            else:
                missing = f"needs {src} (no finished artifact at {self.run_dir / src})"
                inputs[role] = {"stage": src, "path": str(self.run_dir / src), "fingerprint": "missing", "run_id": None}
        return inputs, missing

    # ------------------------------------------------------------------ running
    def run(self, requested: list[str] | None = None, force: tuple[str, ...] = ()) -> list[PlanItem]:
        self.preflight(requested, force)
        self._check_writable()
        self._recover_finished()
        for item in self.plan(requested, force):
            if item.action == "skip":
                print(f"{item.spec.name}: up to date ({self.run_dir / item.spec.name})", flush=True)
                continue
            # Re-plan this stage now that upstream stages have finished (their run_ids are known).
            item = next(i for i in self.plan([item.spec.name], force) if i.spec.name == item.spec.name)
            if item.action == "missing-input":
                raise UserError(f"{item.spec.name}: {item.reason}")
            self.execute(item)
        return self.plan(requested)

    def preflight(self, requested: list[str] | None = None, force: tuple[str, ...] = ()) -> None:
        """The checks of the stages that will run (e.g. local data files read), before anything is
        written: a bad input fails with nothing under output_dir."""
        done = set()
        for item in self.plan(requested, force):
            if item.action == "skip":
                continue
            if item.spec.check and item.spec.check not in done:
                launch.load_entry(item.spec.check)(self.recipe)
                done.add(item.spec.check)
            launch.load_entry(TASK_CHECK)(self.view(item.spec), item.spec.kind or item.spec.name)

    def _recover_finished(self) -> None:
        """A .tmp dir holding a manifest finished but was not renamed (killed in between): promote it."""
        for name in self.order:
            tmp = self.run_dir / f"{name}.tmp"
            if artifacts.read_manifest(tmp) is not None:
                self._promote(tmp, self.run_dir / name)

    def _check_writable(self) -> None:
        base = Path(self.recipe.output_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"output_dir '{base}': cannot create {self.run_dir} ({exc.strerror})") from None
        if not os.access(self.run_dir, os.W_OK):
            raise UserError(f"output_dir '{base}': {self.run_dir} is not writable")

    def execute(self, item: PlanItem) -> dict:
        name = item.spec.name
        final, tmp = self.run_dir / name, self.run_dir / f"{name}.tmp"
        self._prepare_tmp(tmp, item.fingerprint)
        print(f"{name}: running ({item.reason}) -> {final}", flush=True)
        (tmp / "config.yaml").write_text(yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False))
        inputs = {role: v["path"] for role, v in item.inputs.items()}
        (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2))
        (tmp / "reads.json").write_text(json.dumps(list(item.spec.config_keys)))
        started = time.time()
        result = self._launch(item, tmp, inputs)
        manifest = {
            "stage": name, "run_id": uuid.uuid4().hex[:12], "fingerprint": item.fingerprint,
            "code_version": artifacts.CODE_VERSION, "config": self.stage_config(item.spec),
            "inputs": {role: {k: v for k, v in info.items() if k != "stage"} | {"stage": info.get("stage")}
                       for role, info in self._finished_inputs(item).items()},
            "metrics": result.get("metrics", {}), "wall_time_s": round(time.time() - started, 2),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "versions": artifacts.package_versions(), "git_commit": artifacts.git_commit(),
            "wandb": result.get("wandb"), "launch": item.command, "recipe": str(self.recipe_path),
        }
        artifacts.write_json_atomic(tmp / artifacts.MANIFEST, manifest)  # LAST: marks the dir finished
        self._promote(tmp, final)
        print(f"{name}: done in {manifest['wall_time_s']:.1f}s -> {final}", flush=True)
        return manifest

    def _finished_inputs(self, item: PlanItem) -> dict:
        out = {}
        for role, info in item.inputs.items():
            info = dict(info)
            if info.get("stage"):
                manifest = artifacts.read_manifest(self.run_dir / info["stage"]) or {}
                info["run_id"], info["fingerprint"] = manifest.get("run_id"), manifest.get("fingerprint")
            out[role] = info
        return out

    def _prepare_tmp(self, tmp: Path, fp: str) -> None:
        marker = tmp / ".fingerprint"
        if tmp.exists() and (not marker.is_file() or marker.read_text() != fp):
            shutil.rmtree(tmp)  # leftovers of a different config: start clean
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / artifacts.MANIFEST).unlink(missing_ok=True)
        marker.write_text(fp)

    @staticmethod
    def _promote(tmp: Path, final: Path) -> None:
        (tmp / ".fingerprint").unlink(missing_ok=True)
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)

    def _launch(self, item: PlanItem, tmp: Path, inputs: dict[str, str]) -> dict:
        dist = self.distributed_for(item.spec)
        log_path = tmp / "log.txt"
        try:
            if dist.num_processes * dist.num_machines > 1:
                return launch.run_distributed(dist, item.spec.entry, tmp, self.run_dir, item.spec.name)
            return launch.run_in_process(self.recipe, item.spec.entry, item.spec.name, inputs, tmp, self.run_dir,
                                         item.spec.config_keys)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:
            with open(log_path, "a") as fh:
                fh.write(traceback.format_exc())
            if self.debug:
                raise
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StageFailed(item.spec.name, str(log_path), f"{type(exc).__name__}: {cause}") from exc


def status_rows(runner: Runner) -> list[dict]:
    """One row per stage: state, key metrics, wall time, path (for `lifecycle status`)."""
    rows = []
    for item in runner.plan():
        manifest = artifacts.read_manifest(runner.run_dir / item.spec.name)
        state = {"skip": "done", "run": "stale" if manifest else "pending", "missing-input": "blocked"}[item.action]
        if (runner.run_dir / f"{item.spec.name}.tmp").exists() and not manifest:
            state = "partial"
        metrics = (manifest or {}).get("metrics", {})
        rows.append({"stage": item.spec.name, "state": state, "metrics": metrics,
                     "wall_time_s": (manifest or {}).get("wall_time_s"), "path": str(runner.run_dir / item.spec.name)})
    return rows
