"""The report card: runs/<name>/report.md + PNG plots, read from the finished stages' manifests.

    lifecycle report recipes/tiny.yaml      (also `make report`, and the last step of `make all`)

Every number in report.md comes from a stage's manifest.json (the runner writes it; `metrics` is the
dict the stage returned) — the only derived number is the GPU-hour estimate, wall time x processes.
Curves come from each stage's metrics.jsonl (what ctx.tracker.log wrote). Stages that have not run
are listed as missing; the report shows what exists. With `tracking.wandb` on, a W&B run with
job_type "summary" in the run's group carries the ladder as a table and the plots (modelled on
nanochat's report card: one page from base model to assistant).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import artifacts
from pipeline.recipe import recipe_to_dict
from pipeline.report_knowledge import NOTE as KNOWLEDGE_NOTE
from pipeline.report_knowledge import header as knowledge_header
from pipeline.report_knowledge import knowledge_stages
from pipeline.report_knowledge import table as knowledge_table
from pipeline.report_plots import (
    plot_bok,
    plot_knowledge,
    plot_ladder,
    plot_losses,
    plot_overoptimisation,
    plot_rl,
    plot_rm,
)
from pipeline.schema import DEFAULT_CHAIN
from pipeline.tracking import Tracker, wandb_mode

TOKEN_KEYS = ("train/tokens", "tokens")                  # total training tokens a stage reports


@dataclass
class StageRecord:
    name: str
    manifest: dict
    history: list[dict]             # metrics.jsonl rows (step, time, metric...)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}


@dataclass
class Report:
    path: Path
    stages: dict[str, StageRecord]
    missing: list[str]
    plots: dict[str, dict] = field(default_factory=dict)  # name -> {"path", "curves": [labels]}


# ------------------------------------------------------------------ reading
def read_history(stage_dir: Path) -> list[dict]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a partial last line of a killed stage
    return rows


def collect(run_dir: Path, stage_names=DEFAULT_CHAIN) -> tuple[dict[str, StageRecord], list[str]]:
    """The finished stages among `stage_names` (the recipe's chain, in run order), and the missing ones."""
    stages, missing = {}, []
    for name in stage_names:
        manifest = artifacts.read_manifest(run_dir / name)
        if manifest is None:
            missing.append(name)
        else:
            stages[name] = StageRecord(name, manifest, read_history(run_dir / name))
    return stages, missing


def processes(manifest: dict) -> int:
    """Processes the stage ran with, from the launch command the runner recorded."""
    match = re.search(r"--num_processes\s+(\d+)", manifest.get("launch") or "")
    return int(match.group(1)) if match else 1


def gpu_hours(manifest: dict) -> float:
    return float(manifest.get("wall_time_s") or 0.0) * processes(manifest) / 3600.0


KIND = re.compile(r"^(?:(?:acc|format)(?:_\w+)?|pass@\d+)$")  # acc, acc_no_tool, format, pass@8, ...
OTHER_MODELS = ("base", "before", "control")  # prefixes naming another model a stage evaluated


def ladder_key(stage: str, key: str) -> tuple[str, str, str] | None:
    """(column, kind, family) for a per-family eval metric, else None.

    eval/<kind>/<family> is the stage's own model (column = stage). A prefix names another model the
    stage evaluated: eval/base/acc/<f>, base/eval/acc/<f> or base/acc/<f> -> column "base" (the SFT
    stage evaluating its input); control/eval/acc/<f> in rl -> "rl:control" (the equal-compute SFT
    control). kind is acc, format, pass@k, or a variant such as acc_no_tool."""
    parts = key.split("/")
    if len(parts) < 3 or not KIND.match(parts[-2]):
        return None
    prefix = parts[:-2]
    variant = [p for p in prefix if p != "eval"]
    if len(variant) > 1 or ("eval" not in prefix and not (variant and variant[0] in OTHER_MODELS)):
        return None
    column = stage if not variant else "base" if variant[0] == "base" else f"{stage}:{variant[0]}"
    return column, parts[-2], parts[-1]


def ladder(stages: dict[str, StageRecord]) -> tuple[list[str], dict[tuple[str, str], dict[str, float]]]:
    """Columns (models, in pipeline order) and {(kind, family): {column: value}}.

    A stage's "before" model (its input, evaluated by the stage) sits just before it, its controls just after."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    order: dict[str, tuple] = {}
    position = {name: i for i, name in enumerate(stages)}
    for name, rec in stages.items():
        for key, value in rec.metrics.items():
            parsed = ladder_key(name, key)
            if parsed and isinstance(value, (int, float)) and not isinstance(value, bool):
                column, kind, family = parsed
                table.setdefault((kind, family), {})[column] = float(value)
                # within (-0.5, 0.5): a stage's control must come before the next stage's input
                offset = -0.25 if column.endswith(":before") else 0.25 if column != name else 0.0
                order[column] = (-1 if column == "base" else position[name] + offset, column)
    def rank(kind: str) -> int:  # acc, acc_*, pass@k, format, format_*
        return 0 if kind == "acc" else 1 if kind.startswith("acc") else 2 if kind.startswith("pass@") else 3
    rows = dict(sorted(table.items(), key=lambda kv: (rank(kv[0][0]), kv[0])))
    return sorted(order, key=order.__getitem__), rows


BOK_PICKS = ("random", "rm", "oracle")  # the rm stage's eval/bok/<pick>[/<family>] (stages/rm/best_of_k.py)


def bok_cells(metrics_by_point: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Best-of-K accuracies: family ("mean" = the mean over families, last) -> pick -> the values of the
    runs (one per sweep point; one for a single run) that report all three picks."""
    cells: dict[str, dict[str, list[float]]] = {}
    for metrics in metrics_by_point:
        for key, value in metrics.items():
            parts = key.split("/")
            if parts[:2] == ["eval", "bok"] and len(parts) in (3, 4) and parts[2] in BOK_PICKS:
                cells.setdefault(parts[3] if len(parts) == 4 else "mean", {}).setdefault(parts[2], []).append(value)
    order = sorted(f for f in cells if f != "mean") + ["mean"]
    return {f: cells[f] for f in order if f in cells and len(cells[f]) == len(BOK_PICKS)}


def bok_line(metrics: dict) -> list[str]:
    """The report card's best-of-K sentence, from the rm manifest's numbers ([] when it has none)."""
    if "eval/bok/rm" not in metrics:
        return []
    m = {k[len("eval/bok/"):]: fmt(v) for k, v in metrics.items() if k.startswith("eval/bok/") and k.count("/") == 2}
    line = (f"Judged by use, on {m['n_prompts']} held-out prompts with K = {m['k']} completions (mean over "
            f"families): gold accuracy of one random sample {m['random']}, of the best of K picked by the RM "
            f"{m['rm']}, picked by an oracle (the verifier) {m['oracle']}")
    if "share" in m:
        line += f"; the RM keeps {m['share']} of the oracle's gain"
        if "share_ci95_low" in m:
            line += f" (95% CI {m['share_ci95_low']} to {m['share_ci95_high']}, prompts resampled)"
    return [line + ".", ""]


# ------------------------------------------------------------------ formatting
def fmt(value) -> str:
    """Numbers as written into report.md: 6 significant digits (tests read them back)."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
    return str(value)


def md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


def _stage_rows(stages: dict[str, StageRecord]) -> list[list]:
    rows = []
    for name, rec in stages.items():
        m = rec.manifest
        tokens = next((rec.metrics[k] for k in TOKEN_KEYS if k in rec.metrics), None)
        rows.append([name, m.get("run_id", "-"), m.get("wall_time_s"), tokens, processes(m), gpu_hours(m),
                     m.get("started_at", "-")])
    return rows


def _image(report: Report, name: str, alt: str) -> list[str]:
    plot = report.plots.get(name)
    if not plot:
        return []
    rel = Path(plot["path"]).relative_to(report.path.parent)
    return [f"![{alt}]({rel.as_posix()})", "", "Curves: " + ", ".join(plot["curves"]), ""]


def render(report: Report, run_name: str) -> str:
    stages = report.stages
    out = [f"# Report card: {run_name}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from the stage manifests in `{report.path.parent}`.",
           f"Stages present: {', '.join(stages) or 'none'}"
           + (f" (not run yet: {', '.join(report.missing)})" if report.missing else "") + ".", ""]
    out += ["## Stages", "",
            "GPU-hours are estimated as wall time x processes (on a CPU-only machine: process-hours).", ""]
    out += md_table(["stage", "run id", "wall time (s)", "tokens", "processes", "est. GPU-hours", "started"],
                    _stage_rows(stages))
    columns, rows = ladder(stages)
    if rows:
        out += ["## Accuracy ladder", "",
                "Held-out built-in tasks: `acc` = share answered right, `format` = share ending with a "
                "well-formed `Answer:` line.", ""]
        out += md_table(["metric", "family"] + columns,
                        [[kind, fam] + [vals.get(c) for c in columns] for (kind, fam), vals in rows.items()])
        out += _image(report, "ladder", "accuracy ladder")
    knowledge = knowledge_table(report.path.parent, stages)
    if knowledge:
        out += ["## Knowledge", "", KNOWLEDGE_NOTE, ""] + md_table(knowledge_header(stages), knowledge)
        out += _image(report, "knowledge", "knowledge per stage")
    out += ["## Training curves", ""] + _image(report, "loss", "loss curves")
    if "rm" in stages:
        out += ["## Reward model", ""] + _image(report, "rm", "rm curves") + bok_line(stages["rm"].metrics)
        out += _image(report, "bok", "best-of-K gold accuracy")
    if "rl" in stages:
        out += ["## RL", ""] + _image(report, "rl", "rl curves") + _image(report, "overopt", "reward over-optimisation")
    out += ["## Final metrics per stage", ""]
    for name, rec in stages.items():
        out += [f"### {name}", ""] + md_table(["metric", "value"], [[k, v] for k, v in sorted(rec.metrics.items())])
    out += _environment(stages)
    return "\n".join(out)


def _environment(stages: dict[str, StageRecord]) -> list[str]:
    if not stages:
        return []
    latest = max(stages.values(), key=lambda r: r.manifest.get("started_at", ""))
    versions = latest.manifest.get("versions") or {}
    out = ["## Environment", "", f"From the manifest of `{latest.name}` (the stage that ran last).", ""]
    out += md_table(["package", "version"], [[k, f"`{v}`"] for k, v in sorted(versions.items())])
    out += md_table(["stage", "git commit", "code version", "launch"],
                    [[n, f"`{r.manifest.get('git_commit')}`", f"`{r.manifest.get('code_version')}`",
                      f"`{r.manifest.get('launch')}`"] for n, r in stages.items()])
    return out


# ------------------------------------------------------------------ writing
def write_report(run_dir: str | Path, run_name: str | None = None, stage_names=DEFAULT_CHAIN) -> Report:
    """Write run_dir/report.md and run_dir/report/*.png for the stages in `stage_names`; return what was written."""
    run_dir = Path(run_dir)
    stages, missing = collect(run_dir, stage_names)
    report = Report(path=run_dir / "report.md", stages=stages, missing=missing)
    plot_dir = run_dir / "report"
    plot_dir.mkdir(parents=True, exist_ok=True)
    columns, rows = ladder(stages)
    for name, plotted in (("loss", plot_losses({n: r.history for n, r in stages.items()}, plot_dir / "loss.png")),
                          ("ladder", plot_ladder(columns, rows, plot_dir / "ladder.png")),
                          ("rm", plot_rm(stages.get("rm"), plot_dir / "rm.png")),
                          ("rl", plot_rl(stages.get("rl"), plot_dir / "rl.png")),
                          ("bok", plot_bok(bok_cells([stages["rm"].metrics] if "rm" in stages else []),
                                           plot_dir / "bok.png")),
                          ("overopt", plot_overoptimisation(stages.get("rl"), plot_dir / "overopt.png")),
                          ("knowledge", plot_knowledge(knowledge_stages(stages), plot_dir / "knowledge.png"))):
        if plotted:
            report.plots[name] = {"path": str(plot_dir / f"{name}.png"), "curves": plotted}
    report.path.write_text(render(report, run_name or run_dir.name))
    return report


def log_summary_to_wandb(report: Report, recipe) -> str | None:
    """A W&B run (group = run name, job_type "summary"): the ladder as a table and summary, the plots."""
    run_dir = report.path.parent
    tracker = Tracker("summary", run_dir / "report", run_dir, recipe.name, recipe_to_dict(recipe),
                      recipe.tracking, echo=False)
    columns, rows = ladder(report.stages)
    summary = {f"ladder/{stage}/{kind}/{fam}": vals[stage]
               for (kind, fam), vals in rows.items() for stage in columns if stage in vals}
    summary |= {f"{name}/{k}": v for name, rec in report.stages.items() for k, v in rec.metrics.items()
                if isinstance(v, (int, float))}
    tracker.summary(summary)
    if rows:
        tracker.table("summary/ladder", ["metric", "family"] + columns,
                      [[kind, fam] + [vals.get(c) for c in columns] for (kind, fam), vals in rows.items()])
    tracker.images({f"report/{n}": p["path"] for n, p in report.plots.items()})
    return tracker.finish()


def summary_state(report: Report) -> str:
    """What a W&B summary run shows: the stage manifests, and the W&B mode (a key set later makes a run
    online that was offline)."""
    blob = json.dumps({"manifests": {n: r.manifest for n, r in report.stages.items()}, "mode": wandb_mode()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
