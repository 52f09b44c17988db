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


def is_control(column: str) -> bool:
    """A ladder column that is not on the pipeline's path: a stage's control ("rl:control"), not its
    input ("rl:before") nor the base model."""
    return ":" in column and not column.endswith(":before")


def mean_sd(value) -> tuple[float, float]:
    """A ladder cell: one value (sd 0) or the values of a sweep's points (mean, sample sd)."""
    values = value if isinstance(value, list) else [value]
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def ladder_series(columns: list[str], vals: dict) -> tuple[list[int], list[int]]:
    """x positions (column indices) of one family's line through the pipeline's models and of its separate
    control markers."""
    present = [i for i, c in enumerate(columns) if c in vals]
    return [i for i in present if not is_control(columns[i])], [i for i in present if is_control(columns[i])]


def plot_ladder(columns: list[str], rows: dict[tuple[str, str], dict], path: Path) -> list[str]:
    """Held-out accuracy per task family across the pipeline (base -> sft -> rl): one line per family
    through the pipeline's models, controls (e.g. rl:control) as hollow markers off the line. A cell may
    hold a sweep's per-point values: the line then goes through their means, with sd error bars, and each
    point is a faint dot."""
    acc = {fam: vals for (kind, fam), vals in rows.items() if kind == "acc"}
    if not acc or not columns:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = []
    for n, (fam, vals) in enumerate(acc.items()):
        color = f"C{n % 10}"
        line, controls = ladder_series(columns, vals)
        for xs, style in ((line, {"marker": "o", "label": fam}),
                          (controls, {"marker": "D", "linestyle": "none", "mfc": "none", "markersize": 8})):
            if not xs:
                continue
            stats = [mean_sd(vals[columns[i]]) for i in xs]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], color=color, capsize=3, **style)
            for i in xs:
                if isinstance(vals[columns[i]], list):
                    ax.scatter([i] * len(vals[columns[i]]), vals[columns[i]], color=color, alpha=0.3, s=10)
        labels += [f"acc: {fam}"] + [f"{columns[i]} acc: {fam}" for i in controls]
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("accuracy ladder (hollow: controls, off the pipeline)")
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


# proxy (what RL optimises), gold (what we want), KL: the first key of each that the RL stage logged
OVEROPT_KEYS = {"proxy": ("monitor/proxy", "reward/rm"), "gold": ("monitor/gold", "reward/verifier"),
                "KL": ("monitor/kl", "train/kl")}


def plot_overoptimisation(record, path: Path) -> list[str]:
    """Reward over-optimisation (Gao et al. 2022): the proxy reward (the RM) and gold accuracy (the verifier)
    along RL steps (left; steps the hacking monitor flagged shaded) and against the KL to the reference
    policy (right). Drawn only when the RL stage logged both a proxy and gold (the monitor does when an RM
    is a reward)."""
    if record is None:
        return []
    rows = record.history
    found = {role: next((k for k in keys if _series(rows, k)[0]), None) for role, keys in OVEROPT_KEYS.items()}
    if not found["proxy"] or not found["gold"]:
        return []
    series = {role: _series(rows, key) for role, key in found.items() if key}
    fig, axes = plt.subplots(1, 2 if found["KL"] else 1, figsize=(11 if found["KL"] else 5.5, 3.8), squeeze=False)
    kl_at = dict(zip(*series["KL"])) if found["KL"] else {}
    for ax, along_kl in zip(axes[0], (False, True)):
        twin = ax.twinx()
        for axis, role, color in ((ax, "proxy", "C0"), (twin, "gold", "C3")):
            steps, values = series[role]
            if along_kl:
                pairs = [(kl_at[s], v) for s, v in zip(steps, values) if s in kl_at]
                steps, values = [p[0] for p in pairs], [p[1] for p in pairs]
            axis.plot(steps, values, color=color, marker="." if along_kl else None, lw=0.8 if along_kl else 1.5,
                      label=f"{role}: {found[role]}")
            axis.set_ylabel(f"{role} ({found[role]})", color=color)
        ax.set_xlabel(f"KL to the reference ({found['KL']})" if along_kl else "step")
        flagged = [] if along_kl else [r["step"] for r in rows if r.get("monitor/hacking") == 1]
        for step in flagged:
            ax.axvspan(step - 0.5, step + 0.5, color="k", alpha=0.1, lw=0)
        ax.set_title("proxy vs gold against KL" if along_kl else
                     "proxy vs gold along RL steps" + (" (shaded: hacking flagged)" if flagged else ""))
    _save(fig, path)
    return [f"{role}: {key}" for role, key in found.items() if key]


def plot_bok(cells: dict[str, dict], path: Path) -> list[str]:
    """Best-of-K gold accuracy per family: one random sample, the RM's pick, the oracle's pick. A cell may
    hold a sweep's per-point values (bars at the mean, sd error bars)."""
    if not cells:
        return []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 1.2 * len(cells)), 3.8))
    width = 0.26
    for j, (name, color) in enumerate((("random", "C7"), ("rm", "C0"), ("oracle", "C2"))):
        stats = [mean_sd(cells[fam][name]) for fam in cells]
        ax.bar([i + (j - 1) * width for i in range(len(cells))], [m for m, _ in stats], width,
               yerr=[s for _, s in stats], capsize=3, color=color, label={"random": "one random sample",
                                                                           "rm": "best of K by the RM",
                                                                           "oracle": "best of K by an oracle"}[name])
    ax.set_xticks(range(len(cells)), list(cells), fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("gold accuracy (correct, well formed)")
    ax.set_title("the reward model judged by use: best-of-K")
    ax.legend(fontsize=8)
    _save(fig, path)
    return [f"bok: {fam}" for fam in cells]


KNOWLEDGE_BARS = (("acc_known", "right on known", "C2"), ("false_refusal_known", "refused on known", "C1"),
                  ("refusal_unknown", "refused on unknown", "C0"), ("hallucination_unknown", "invented on unknown", "C3"))


def plot_knowledge(rates: dict[str, dict[str, float]], path: Path) -> list[str]:
    """Per stage and mode (from memory, with search): answers on known facts, refusals and inventions on
    unknown ones. `rates`: {stage: {rate: value}} (eval/knowledge/* without the prefix)."""
    groups = [(f"{stage}\n{mode}", r, "" if mode == "memory" else "_search") for stage, r in rates.items()
              for mode in ("memory", "search") if mode == "memory" or "acc_search" in r]
    if not groups:
        return []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 1.4 * len(groups)), 3.8))
    width = 0.2
    for j, (key, title, color) in enumerate(KNOWLEDGE_BARS):
        ax.bar([i + (j - 1.5) * width for i in range(len(groups))], [r.get(key + tail, 0.0) for _, r, tail in groups],
               width, color=color, label=title)
    ax.set_xticks(range(len(groups)), [g for g, _, _ in groups], fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("share of held-out questions")
    ax.set_title("knowledge: what each model answers, refuses and invents")
    ax.legend(fontsize=7, loc="upper center", ncol=4)
    _save(fig, path)
    return [f"knowledge: {g.replace(chr(10), ' ')}" for g, _, _ in groups]
