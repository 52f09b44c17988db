"""A sweep's combined report: runs/<sweep>/sweep.md + sweep.json + sweep/*.png, from its points' manifests.

    write_sweep_report(sweep_dir, sweep_name, points, run_dirs, stage_names, recipe_path)

For every numeric final metric of every stage's manifest (the dict the stage returned): the mean, the
sample standard deviation (n - 1; none with fewer than two values) and n over the points that finished
the stage, and each point's own value. When axes other than `seed` vary, the same statistics per
combination of their values too (mean and sd over the seeds). Plots: the accuracy ladder (mean with sd
bars, each point a dot) and best-of-K (when the rm stage reported it). Like report.md, every number
comes from a manifest; mean, sd and n are the only ones computed.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from pipeline import artifacts
from pipeline.report import bok_cells, collect, fmt, ladder, md_table
from pipeline.report_plots import plot_bok, plot_ladder

SEED_KEY = "seed"  # the axis that repeats an experiment rather than changing it


def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def aggregate(by_point: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """{point: {stage: metrics}} -> {stage: {metric: {"mean", "sd", "n", "values": {point: value}}}};
    stages and metrics in first-seen order, only finite numbers."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for point, stages in by_point.items():
        for stage, metrics in stages.items():
            for key, value in metrics.items():
                if numeric(value):
                    table.setdefault(stage, {}).setdefault(key, {})[point] = float(value)
    return {stage: {key: summarise(list(values.values())) | {"values": values} for key, values in metrics.items()}
            for stage, metrics in table.items()}


def varying(points) -> list[str]:
    """Keys whose value differs between points, in axis order."""
    keys = [k for k, _ in points[0].values] if points else []
    return [k for k in keys if len({dict(p.values)[k] for p in points}) > 1]


def point_label(point, keys: list[str]) -> str:
    """A point's column header: its values of the varying keys (its run name when nothing varies)."""
    values = dict(point.values)
    return ", ".join(f"{k}={values[k]}" for k in keys) or point.name


def group_points(points) -> dict[str, list]:
    """Points by their values of the varying keys other than the seed ({} when only the seed varies)."""
    keys = [k for k in varying(points) if k != SEED_KEY]
    groups: dict[str, list] = {}
    for point in points:
        groups.setdefault(point_label(point, keys) if keys else "", []).append(point)
    return groups if keys and any(len(g) > 1 for g in groups.values()) else {}


def spread_ladder(records_by_point: dict[str, dict]) -> tuple[list[str], dict[tuple[str, str], dict[str, list]]]:
    """The accuracy ladder over points: columns in pipeline order, {(kind, family): {column: [values]}}."""
    columns: list[str] = []
    rows: dict[tuple[str, str], dict[str, list]] = {}
    for records in records_by_point.values():
        cols, table = ladder(records)
        for i, col in enumerate(cols):
            if col not in columns:  # after the column that precedes it in this point's ladder
                after = max((columns.index(c) for c in cols[:i] if c in columns), default=-1)
                columns.insert(after + 1, col)
        for key, vals in table.items():
            for col, value in vals.items():
                rows.setdefault(key, {}).setdefault(col, []).append(value)
    return columns, rows


def cell(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"{fmt(stats['mean'])} ± {fmt(stats['sd'])}" if stats["sd"] is not None else fmt(stats["mean"])


def render(name: str, recipe_path, points, labels: dict, finished: dict, failed: dict, metrics: dict,
           groups: dict, ladder_rows: tuple, plots: dict, sweep_dir: Path) -> str:
    keys = [k for k, _ in points[0].values]
    out = [f"# Sweep: {name}", "",
           f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}: {len(points)} points of `{recipe_path}`, each its own "
           f"run (`<output_dir>/<run name>/`), all in W&B group `{name}`.", ""]
    out += md_table(["point", "run name"] + keys + ["stages finished"],
                    [[labels[p.name], p.name] + [v for _, v in p.values]
                     + [(", ".join(finished[p.name]) or "none") + (" (failed)" if p.name in failed else "")]
                     for p in points])
    out += ["Each number below is the mean ± sample sd (n - 1) over the points that finished the stage "
            "(no sd with one point), then each point's own value, from the stages' manifests.", ""]
    columns, rows = ladder_rows
    if rows:
        out += ["## Accuracy ladder (mean ± sd over points)", ""]
        out += md_table(["metric", "family"] + columns,
                        [[kind, fam] + [cell(summarise(vals[c])) if c in vals else "-" for c in columns]
                         for (kind, fam), vals in rows.items()])
    for plot, alt in (("ladder", "accuracy ladder over points"), ("bok", "best-of-K over points")):
        if plot in plots:
            out += [f"![{alt}]({Path(plots[plot]).relative_to(sweep_dir).as_posix()})", ""]
    for stage, table in metrics.items():
        out += [f"## {stage}", ""]
        out += md_table(["metric", "mean", "sd", "n"] + [labels[p.name] for p in points],
                        [[key, s["mean"], s["sd"], s["n"]] + [s["values"].get(p.name) for p in points]
                         for key, s in table.items()])
    for label_keys, by_group in groups.items():
        out += [f"## By {label_keys} (mean ± sd over the seeds)", ""]
        for stage, table in metrics.items():
            out += [f"### {stage}", ""]
            out += md_table(["metric"] + list(by_group), [[key] + [cell(by_group[g].get(stage, {}).get(key))
                                                                    for g in by_group] for key in table])
    return "\n".join(out)


def write_sweep_report(sweep_dir: Path, name: str, points, run_dirs: dict[str, Path], stage_names: dict[str, list],
                       recipe_path, failed: dict[str, str] | None = None) -> dict:
    """Write sweep_dir/sweep.md, sweep.json and sweep/*.png; return what sweep.json holds."""
    failed = failed or {}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    records = {p.name: collect(run_dirs[p.name], stage_names[p.name])[0] for p in points}
    by_point = {p: {s: r.metrics for s, r in recs.items()} for p, recs in records.items()}
    metrics = aggregate(by_point)
    keys = varying(points)
    labels = {p.name: point_label(p, keys) for p in points}
    groups = {}
    grouped = group_points(points)
    if grouped:
        group_keys = ", ".join(k for k in keys if k != SEED_KEY)
        groups[group_keys] = {g: aggregate({p.name: by_point[p.name] for p in members})
                              for g, members in grouped.items()}
    columns, rows = spread_ladder(records)
    plot_dir = sweep_dir / "sweep"
    plot_dir.mkdir(exist_ok=True)
    plots = {}
    bok = bok_cells([recs["rm"].metrics for recs in records.values() if "rm" in recs])
    for plot, drawn in (("ladder", plot_ladder(columns, rows, plot_dir / "ladder.png")),
                        ("bok", plot_bok(bok, plot_dir / "bok.png"))):
        if drawn:
            plots[plot] = str(plot_dir / f"{plot}.png")
    finished = {p: list(recs) for p, recs in records.items()}
    (sweep_dir / "sweep.md").write_text(render(name, recipe_path, points, labels, finished, failed, metrics,
                                               groups, (columns, rows), plots, sweep_dir))
    data = {"name": name, "recipe": str(recipe_path),
            "points": [{"name": p.name, "label": labels[p.name], "values": dict(p.values),
                        "run_dir": str(run_dirs[p.name]), "stages": finished[p.name], "failed": failed.get(p.name)}
                       for p in points],
            "metrics": metrics, "groups": groups, "plots": plots,
            "ladder": {"columns": columns, "rows": [{"kind": k, "family": f, "values": v} for (k, f), v in rows.items()]}}
    artifacts.write_json_atomic(sweep_dir / "sweep.json", data)
    return data
