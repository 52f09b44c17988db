"""The report card's PNG plots (matplotlib, Agg backend: no display needed).

Each function draws from metrics.jsonl rows or manifest metrics, saves one PNG and returns the labels
of the curves it drew ([] and no file when there is nothing to draw), so the report can list them and
tests can check them.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _keys(rows: list[dict], want) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and want(key):
                seen.setdefault(key)
    return list(seen)


def _is_loss(key: str) -> bool:
    return key == "train/loss" or (key.startswith("eval/") and ("loss" in key or key.endswith("bpb")))


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(histories: dict[str, list[dict]], path: Path) -> list[str]:
    """One panel per stage that logged train/loss (scales differ between stages)."""
    panels = {stage: _keys(rows, _is_loss) for stage, rows in histories.items()}
    panels = {stage: keys for stage, keys in panels.items() if "train/loss" in keys}
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    labels = []
    for ax, (stage, keys) in zip(axes[0], panels.items()):
        for key in keys:
            steps, values = _series(histories[stage], key)
            ax.plot(steps, values, marker="." if len(steps) < 20 else None, label=key)
            labels.append(f"{stage}: {key}")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    _save(fig, path)
    return labels


def plot_ladder(columns: list[str], rows: dict[tuple[str, str], dict[str, float]], path: Path) -> list[str]:
    """Held-out accuracy per task family across stages (base -> sft -> rl)."""
    acc = {fam: vals for (kind, fam), vals in rows.items() if kind == "acc"}
    if not acc or not columns:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = []
    for fam, vals in acc.items():
        xs = [i for i, c in enumerate(columns) if c in vals]
        ax.plot(xs, [vals[columns[i]] for i in xs], marker="o", label=fam)
        labels.append(f"acc: {fam}")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("accuracy ladder")
    ax.legend(fontsize=8)
    _save(fig, path)
    return labels


def plot_rm(record, path: Path) -> list[str]:
    """Reward-model accuracies over steps (metrics.jsonl); a bar chart of the final ones otherwise."""
    if record is None:
        return []
    def overall(key: str) -> bool:  # eval/pairwise_acc, eval/top1_acc, ... not the per-family ones
        return key.count("/") == 1 and key.endswith("_acc")
    keys = _keys(record.history, overall)
    final = {k: v for k, v in record.metrics.items() if overall(k) and isinstance(v, (int, float))}
    if not keys and not final:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    if keys:
        for key in keys:
            ax.plot(*_series(record.history, key), marker=".", label=key)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        labels = [f"rm: {k}" for k in keys]
    else:
        ax.bar(range(len(final)), list(final.values()))
        ax.set_xticks(range(len(final)), list(final), rotation=20, fontsize=8)
        labels = [f"rm (final): {k}" for k in final]
    ax.set_ylim(0, 1.02)
    ax.set_title("reward model accuracy")
    _save(fig, path)
    return labels


def plot_rl(record, path: Path) -> list[str]:
    """Reward (left) and KL to the reference policy (right) over RL steps."""
    if record is None:
        return []
    groups = {"reward": _keys(record.history, lambda k: any("reward" in part for part in k.split("/"))),
              "KL": _keys(record.history, lambda k: "kl" in k.split("/")[-1].split("_"))}
    groups = {name: keys for name, keys in groups.items() if keys}
    if not groups:
        return []
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    labels = []
    for ax, (name, keys) in zip(axes[0], groups.items()):
        for key in keys:
            ax.plot(*_series(record.history, key), label=key)
            labels.append(f"rl {name}: {key}")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    _save(fig, path)
    return labels
