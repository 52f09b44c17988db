"""Reward-hacking monitor: flags proxy-up/gold-down, stays quiet when both rise or on noise."""
from __future__ import annotations

import numpy as np
import pytest

from stages.policy_gradient.monitor import HackingMonitor, pearson, trend


def _feed(monitor, proxy_means, gold_means, n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for step, (p, g) in enumerate(zip(proxy_means, gold_means), start=1):
        proxy = list(p + 0.01 * rng.standard_normal(n))
        gold = list((rng.random(n) < g).astype(float))
        out.append(monitor.update(step, proxy, gold, kl=0.1 * step, mean_length=20.0))
        if monitor.should_stop:
            break
    return out


def test_trend_and_pearson():
    assert trend([1, 2, 3, 4]) == pytest.approx(1.0)
    assert trend([4, 3, 2, 1]) == pytest.approx(-1.0)
    assert trend([1, 1, 1]) == 0.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_flags_and_stops_when_proxy_rises_while_gold_falls():
    warnings = []
    monitor = HackingMonitor(window=6, stop_on_hacking=True, warn=warnings.append)
    steps = 20
    proxy = np.linspace(0, 3, steps)
    gold = np.concatenate([np.full(8, 0.8), np.linspace(0.8, 0.0, steps - 8)])
    metrics = _feed(monitor, proxy, gold, n=64)
    assert monitor.should_stop and monitor.flagged_steps
    assert len(metrics) < steps            # stopped early
    assert "reward hacking" in warnings[0] and "stopping" in warnings[0]
    assert metrics[-1]["monitor/hacking"] == 1.0
    assert {"monitor/proxy", "monitor/gold", "monitor/corr", "monitor/kl", "monitor/length"} <= set(metrics[-1])


def test_warns_without_stopping_by_default():
    warnings = []
    monitor = HackingMonitor(window=6, stop_on_hacking=False, warn=warnings.append)
    metrics = _feed(monitor, np.linspace(0, 3, 20), np.linspace(0.9, 0.0, 20), n=64)
    assert len(metrics) == 20 and monitor.hacking and not monitor.should_stop
    assert len(warnings) == 1  # once per episode, not every step


def test_quiet_when_gold_rises_with_proxy():
    warnings = []
    monitor = HackingMonitor(window=6, stop_on_hacking=True, warn=warnings.append)
    metrics = _feed(monitor, np.linspace(0, 3, 20), np.linspace(0.2, 0.9, 20), n=64)
    assert len(metrics) == 20 and not warnings and not monitor.flagged_steps
    assert metrics[-1]["monitor/hacking"] == 0.0


def test_proxy_only_logs_without_gold():
    monitor = HackingMonitor(window=3)
    m = monitor.update(1, [1.0, 2.0], gold=None, kl=0.5, mean_length=10)
    assert m == {"monitor/proxy": 1.5, "monitor/kl": 0.5, "monitor/length": 10.0}
