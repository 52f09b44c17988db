"""Reward-model evaluation: scores of held-out completions, pairwise and top-1 accuracy against the
rankings and against the verifier's gold tiers (with a 95% interval that resamples prompts), and the
reward histogram by verifier tier.
"""
from __future__ import annotations

from pathlib import Path

import torch

from reward.model_scorer import reward_logits
from reward.ranking import ranking_pairs
from stages.rm.data import Example


def score_examples(model, examples: list[Example], pad_id: int, device, offset: float = 0.0) -> list[torch.Tensor]:
    flat = [s for e in examples for s in e.seqs]
    scores = reward_logits(model, flat, pad_id, 32, device) - offset if flat else torch.empty(0)
    out, pos = [], 0
    for e in examples:
        out.append(scores[pos:pos + len(e.seqs)])
        pos += len(e.seqs)
    return out


def ranking_metrics(examples: list[Example], rewards: list[torch.Tensor]) -> dict[str, float]:
    """Pairwise/top-1 accuracy against the training ranking and against the gold (verifier) ranking."""
    tally: dict[str, list[float]] = {}
    gold_by_prompt: list[list[float]] = []  # the gold pairs' hits of each prompt, for the interval

    def add(key: str, value: float) -> None:
        tally.setdefault(key, []).append(value)

    for e, r in zip(examples, rewards):
        for prefix, ranks in (("", e.ranks), ("gold_", [-t for t in e.gold] if e.gold else None)):
            pairs = ranking_pairs([x - min(ranks) for x in ranks]) if ranks else []
            if not pairs:
                continue
            hits = [float(r[w] > r[l]) for w, l in pairs]
            if prefix:
                gold_by_prompt.append(hits)
            for (w, l), hit in zip(pairs, hits):
                add(f"eval/{prefix}pairwise_acc", hit)
                add(f"eval/{prefix}pairwise_acc/{e.family}", hit)
                if prefix:  # gold pairs split by what separates them: the answer's truth, or only its form
                    kind = "correctness" if (e.gold[w] >= 2) != (e.gold[l] >= 2) else "format"
                    add(f"eval/gold_pairwise_acc_{kind}", hit)
            best = [i for i, x in enumerate(ranks) if x == min(ranks)]
            add(f"eval/{prefix}top1_acc", float(int(r.argmax()) in best))
            add(f"eval/{prefix}top1_chance", len(best) / len(ranks))
    metrics = {key: sum(v) / len(v) for key, v in tally.items()}
    for prefix in ("", "gold_"):
        metrics[f"eval/{prefix}n_pairs"] = float(len(tally.get(f"eval/{prefix}pairwise_acc", [])))
        for key, v in tally.items():
            if key.startswith(f"eval/{prefix}pairwise_acc/"):
                metrics[f"eval/{prefix}n_pairs/{key.rsplit('/', 1)[1]}"] = float(len(v))
    for kind in ("correctness", "format"):
        metrics[f"eval/gold_n_pairs_{kind}"] = float(len(tally.get(f"eval/gold_pairwise_acc_{kind}", [])))
    metrics["eval/chance"] = 0.5  # a random scorer orders a strict pair right half the time
    if gold_by_prompt:
        metrics["eval/gold_pairwise_acc_ci95_low"], metrics["eval/gold_pairwise_acc_ci95_high"] = \
            prompt_bootstrap_ci(gold_by_prompt)
    return metrics


def prompt_bootstrap_ci(hits_by_prompt: list[list[float]], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of pairwise accuracy, resampling whole prompts (a prompt's pairs share its
    completions, so they are not independent: a pair bootstrap would be too narrow)."""
    gen = torch.Generator().manual_seed(seed)
    sums = torch.tensor([sum(h) for h in hits_by_prompt], dtype=torch.float64)
    counts = torch.tensor([len(h) for h in hits_by_prompt], dtype=torch.float64)
    picks = torch.randint(len(hits_by_prompt), (n_boot, len(hits_by_prompt)), generator=gen)
    accs = (sums[picks].sum(1) / counts[picks].sum(1)).sort().values
    return float(accs[int(0.025 * (n_boot - 1))]), float(accs[int(0.975 * (n_boot - 1))])


def plot_histogram(examples: list[Example], rewards: list[torch.Tensor], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: plotting is optional for everything else that imports this
    names = {3: "correct, well formed", 2: "correct, malformed", 1: "wrong, well formed", 0: "wrong, malformed"}
    groups: dict[str, list[float]] = {}
    for e, r in zip(examples, rewards):
        labels = [names[t] for t in e.gold] if e.gold else [f"rank {x}" for x in e.ranks]
        for label, value in zip(labels, r.tolist()):
            groups.setdefault(label, []).append(value)
    values = [v for g in groups.values() for v in g]
    lo, hi = min(values), max(values)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]  # shared bins: tiers comparable
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in sorted(groups):
        ax.hist(groups[label], bins=bins, alpha=0.6, label=f"{label} (n={len(groups[label])})")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel="reward (centred: reference answers average 0)", ylabel="completions",
           title="Held-out rewards by verifier tier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
