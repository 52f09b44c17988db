"""The reward model judged by use: pick the best of K completions by the RM, and see how often it is right.

    from stages.rm.best_of_k import best_of_k_metrics
    metrics = best_of_k_metrics(held_out_examples, rewards)     # eval/bok/... (the rm stage's manifest)

Pairwise accuracy says how often the RM orders two completions as the verifier would; what RL and
best-of-K sampling need is that its *top* pick is right. On each held-out prompt with gold tiers (the
verifier's, reward/ranking.py) and K completions:
- random: gold accuracy of one completion drawn at random = the share of the K in TOP_TIER (correct and
  well formed); the expectation, not one draw;
- rm: gold accuracy of the completion the RM scores highest (a tie at the top counts the tied ones'
  mean: what a random tie-break gives on average);
- oracle: 1 when any of the K is in TOP_TIER (the verifier picks).
Each is a mean over a family's prompts, and share = (rm - random) / (oracle - random): the part of the
oracle's gain over one random sample that picking by the RM keeps (1 = as good as the verifier, 0 = no
better than chance, < 0 = worse). The overall numbers average the families (each family weighs the
same), with a 95% percentile bootstrap interval that resamples prompts (within each family for the
overall one). share and its interval are left out where the oracle gains nothing (every completion right,
or every one wrong); resamples without gain are dropped from the interval.

Metrics: eval/bok/{random,rm,oracle,share,share_ci95_low,share_ci95_high,n_prompts}, the same per
family as eval/bok/<name>/<family>, and eval/bok/k (mean completions per prompt). A prompt that two
rankers ranked (the same completions twice) counts once.
"""
from __future__ import annotations

import numpy as np

from reward.ranking import TOP_TIER
from stages.rm.data import Example

COLUMNS = ("random", "rm", "oracle")


def pick_scores(rewards: list[float], tiers: list[int]) -> tuple[float, float, float]:
    """(random, rm, oracle) gold accuracy of one prompt's K completions."""
    good = [float(t >= TOP_TIER) for t in tiers]
    top = max(rewards)
    picked = [g for g, r in zip(good, rewards) if r == top]
    return sum(good) / len(good), sum(picked) / len(picked), max(good)


def share(means: np.ndarray) -> float:
    """(rm - random) / (oracle - random) of (..., 3) means; nan where the oracle gains nothing."""
    gain = means[..., 2] - means[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gain > 1e-12, (means[..., 1] - means[..., 0]) / gain, np.nan)


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """95% percentile interval of the finite values (as stages/rm/metrics.prompt_bootstrap_ci picks them)."""
    finite = np.sort(values[np.isfinite(values)])
    if len(finite) < 0.5 * len(values):  # most resamples show no gain: no interval worth the name
        return None
    return float(finite[int(0.025 * (len(finite) - 1))]), float(finite[int(0.975 * (len(finite) - 1))])


def per_family(examples: list[Example], rewards) -> dict[str, np.ndarray]:
    """family -> (prompts, 3) array of (random, rm, oracle), one row per distinct prompt with gold tiers."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    seen: set = set()
    for e, r in zip(examples, rewards):
        key = tuple(tuple(s) for s in e.seqs)
        if not e.gold or len(e.gold) != len(e.seqs) or key in seen:
            continue
        seen.add(key)
        rows.setdefault(e.family, []).append(pick_scores([float(x) for x in r], e.gold))
    return {fam: np.array(v, dtype=np.float64) for fam, v in sorted(rows.items())}


def _named(prefix: str, suffix: str, means: np.ndarray, boot: np.ndarray, n: int) -> dict[str, float]:
    out = {f"{prefix}/{name}{suffix}": float(m) for name, m in zip(COLUMNS, means)}
    out[f"{prefix}/n_prompts{suffix}"] = float(n)
    point = share(means)
    interval = percentile_interval(share(boot))
    if np.isfinite(point):
        out[f"{prefix}/share{suffix}"] = float(point)
        if interval is not None:
            out[f"{prefix}/share_ci95_low{suffix}"], out[f"{prefix}/share_ci95_high{suffix}"] = interval
    return out


def best_of_k_metrics(examples: list[Example], rewards, n_boot: int = 1000, seed: int = 0,
                      prefix: str = "eval/bok") -> dict[str, float]:
    """Best-of-K gold accuracy (random / RM / oracle pick) and the RM's share of the oracle's gain, per
    family and averaged over families, each with a 95% prompt-bootstrap interval. {} without gold tiers."""
    families = per_family(examples, rewards)
    if not families:
        return {}
    rng = np.random.default_rng(seed)
    metrics: dict[str, float] = {}
    boots = []
    for fam, rows in families.items():
        boot = rows[rng.integers(len(rows), size=(n_boot, len(rows)))].mean(axis=1)  # (n_boot, 3)
        boots.append(boot)
        metrics |= _named(prefix, f"/{fam}", rows.mean(axis=0), boot, len(rows))
    means = np.mean([rows.mean(axis=0) for rows in families.values()], axis=0)       # (3,) family average
    metrics |= _named(prefix, "", means, np.mean(boots, axis=0), sum(len(r) for r in families.values()))
    ks = [len(e.seqs) for e in examples if e.gold]
    metrics[f"{prefix}/k"] = float(sum(ks) / len(ks))
    return metrics


def describe(metrics: dict[str, float], prefix: str = "eval/bok") -> str:
    """One sentence for logs and the report card ("" without best-of-K metrics)."""
    if f"{prefix}/rm" not in metrics:
        return ""
    m = {name: metrics[f"{prefix}/{name}"] for name in COLUMNS}
    text = (f"best-of-{metrics[f'{prefix}/k']:.3g} on {metrics[f'{prefix}/n_prompts']:.0f} held-out prompts (mean over "
            f"families): one random sample {m['random']:.3f}, picked by the RM {m['rm']:.3f}, by an oracle "
            f"{m['oracle']:.3f}")
    if f"{prefix}/share" in metrics:
        text += f"; the RM keeps {metrics[f'{prefix}/share']:.3f} of the oracle's gain"
        if f"{prefix}/share_ci95_low" in metrics:
            text += f" (95% CI {metrics[f'{prefix}/share_ci95_low']:.3f} to {metrics[f'{prefix}/share_ci95_high']:.3f})"
    return text
