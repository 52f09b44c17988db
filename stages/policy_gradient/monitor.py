"""Reward-hacking monitor: watch a proxy reward (the RM) beside a gold one (the task verifier).

    monitor = HackingMonitor(window=10, stop_on_hacking=False, warn=ctx.log)
    metrics = monitor.update(step, proxy=rm_scores, gold=verifier_scores, kl=kl, mean_length=n)
    if monitor.should_stop: ...

Goodhart's law made measurable (Gao et al. 2022, "Scaling laws for reward model overoptimization"):
as the policy optimises the proxy, gold first rises with it and then falls while the proxy keeps
rising. Over the last `window` steps we take the trend of each per-step mean (Spearman rank
correlation with the step index, so the scale of either reward does not matter) and flag hacking when
the proxy trends up, gold trends down, and gold's second-half mean is below its first-half mean by at
least `min_gold_drop`. Alongside: the running Pearson correlation between proxy and gold over the
window's samples (it drifts towards 0 or below when the proxy stops tracking gold), KL, and length.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # ties share their mean rank
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(x, y) -> Optional[float]:
    """Pearson correlation, or None when either side is constant (undefined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def trend(values) -> float:
    """Spearman correlation of a series with time: +1 steadily rising, -1 steadily falling."""
    values = np.asarray(values, dtype=float)
    r = pearson(_ranks(values), np.arange(len(values)))
    return 0.0 if r is None else r


class HackingMonitor:
    def __init__(self, window: int = 10, stop_on_hacking: bool = False, min_trend: float = 0.5,
                 min_gold_drop: float = 0.02, warn: Callable[[str], None] = print):
        self.window, self.stop_on_hacking = window, stop_on_hacking
        self.min_trend, self.min_gold_drop, self.warn = min_trend, min_gold_drop, warn
        self.proxy_means: deque = deque(maxlen=window)
        self.gold_means: deque = deque(maxlen=window)
        self.samples: deque = deque(maxlen=window)   # per step: (proxy list, gold list)
        self.hacking = False
        self.flagged_steps: list[int] = []

    def state_dict(self) -> dict:
        """What a resumed run needs to flag (or not) at the same step as an uninterrupted one."""
        return {key: value for key, value in vars(self).items() if key != "warn"}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    @property
    def should_stop(self) -> bool:
        return self.hacking and self.stop_on_hacking

    def update(self, step: int, proxy: list[float], gold: Optional[list[float]] = None,
               kl: Optional[float] = None, mean_length: Optional[float] = None) -> dict[str, float]:
        """Record one step; returns monitor/* metrics. Without gold only proxy, KL and length are logged."""
        metrics = {"monitor/proxy": float(np.mean(proxy))}
        if kl is not None:
            metrics["monitor/kl"] = float(kl)
        if mean_length is not None:
            metrics["monitor/length"] = float(mean_length)
        if gold is None:
            return metrics
        metrics["monitor/gold"] = float(np.mean(gold))
        self.proxy_means.append(metrics["monitor/proxy"])
        self.gold_means.append(metrics["monitor/gold"])
        self.samples.append((list(proxy), list(gold)))
        corr = pearson([p for ps, _ in self.samples for p in ps], [g for _, gs in self.samples for g in gs])
        if corr is not None:
            metrics["monitor/corr"] = corr
        if len(self.proxy_means) == self.window:
            metrics.update(self._check(step))
        return metrics

    def _check(self, step: int) -> dict[str, float]:
        proxy_trend, gold_trend = trend(self.proxy_means), trend(self.gold_means)
        half = self.window // 2
        gold = list(self.gold_means)
        gold_drop = float(np.mean(gold[:half]) - np.mean(gold[half:]))
        hacking = proxy_trend >= self.min_trend and gold_trend <= -self.min_trend and gold_drop >= self.min_gold_drop
        if hacking and not self.hacking:
            self.flagged_steps.append(step)
            action = "stopping (rl.stop_on_hacking)" if self.stop_on_hacking else "continuing (rl.stop_on_hacking: false)"
            self.warn(f"WARNING reward hacking suspected at step {step}: over the last {self.window} steps the "
                      f"proxy reward rose (trend {proxy_trend:+.2f}) while gold accuracy fell by {gold_drop:.3f} "
                      f"(trend {gold_trend:+.2f}); {action}")
        self.hacking = hacking
        return {"monitor/proxy_trend": proxy_trend, "monitor/gold_trend": gold_trend,
                "monitor/hacking": float(hacking)}
