"""The RM judged by use: best-of-K gold accuracy by the RM vs one random sample vs an oracle, numbers by hand."""
from __future__ import annotations

import pytest
import torch

from stages.rm.best_of_k import best_of_k_metrics, describe, pick_scores
from stages.rm.data import Example


def ex(family: str, tiers, tag: int) -> Example:
    """One held-out prompt: distinct token sequences per completion (tag keeps prompts apart)."""
    k = len(tiers) if tiers else 2
    return Example([[tag, i] for i in range(k)], [0] * k, family, list(tiers) if tiers else None, "verifier")


def test_pick_scores_one_prompt():
    assert pick_scores([0.1, 0.9, 0.2, 0.5], [3, 0, 0, 3]) == (0.5, 0.0, 1.0)   # the RM picks a wrong one
    assert pick_scores([2, 1, 0, -1], [3, 1, 1, 1]) == (0.25, 1.0, 1.0)
    assert pick_scores([1, 1, 0, 0], [3, 0, 3, 0]) == (0.5, 0.5, 1.0)            # tie at the top: its mean
    assert pick_scores([0, 0], [2, 1]) == (0.0, 0.0, 0.0)                         # correct but malformed is not TOP_TIER


def test_best_of_k_by_hand():
    examples = [ex("arithmetic", [3, 0, 0, 3], 1), ex("arithmetic", [3, 1, 1, 1], 2),
                ex("arithmetic", [1, 1, 1, 1], 3), ex("arithmetic", [3, 0, 3, 0], 4),
                ex("spelling", [3, 0, 0, 0], 5), ex("spelling", [3, 3, 3, 3], 6),
                ex("persona", None, 7)]                                           # no gold: not verifiable
    rewards = [[0.1, 0.9, 0.2, 0.5], [2, 1, 0, -1], [0, 0, 0, 0], [1, 1, 0, 0],
               [5, 1, 1, 1], [0, 1, 2, 3], [0, 1]]
    examples.append(examples[1])                  # the same prompt ranked by a second source counts once
    rewards.append(rewards[1])
    m = best_of_k_metrics(examples, [torch.tensor(r, dtype=torch.float) for r in rewards])
    # arithmetic: random (.5 + .25 + 0 + .5) / 4, rm (0 + 1 + 0 + .5) / 4, oracle 3 / 4
    assert m["eval/bok/random/arithmetic"] == pytest.approx(0.3125)
    assert m["eval/bok/rm/arithmetic"] == pytest.approx(0.375)
    assert m["eval/bok/oracle/arithmetic"] == pytest.approx(0.75)
    assert m["eval/bok/share/arithmetic"] == pytest.approx(1 / 7)                # .0625 / .4375
    assert m["eval/bok/n_prompts/arithmetic"] == 4
    # spelling: random (.25 + 1) / 2, rm 1, oracle 1 -> the RM keeps all of the oracle's gain
    assert (m["eval/bok/random/spelling"], m["eval/bok/rm/spelling"], m["eval/bok/oracle/spelling"]) == (0.625, 1, 1)
    assert m["eval/bok/share/spelling"] == 1.0
    # every resample gains nothing (only prompt 6) or keeps all of the gain: the interval is exactly [1, 1]
    assert (m["eval/bok/share_ci95_low/spelling"], m["eval/bok/share_ci95_high/spelling"]) == (1.0, 1.0)
    # the mean over verifiable families (each weighs the same): random .46875, rm .6875, oracle .875
    assert (m["eval/bok/random"], m["eval/bok/rm"], m["eval/bok/oracle"]) == pytest.approx((0.46875, 0.6875, 0.875))
    assert m["eval/bok/share"] == pytest.approx(7 / 13)                          # .21875 / .40625
    assert m["eval/bok/share_ci95_low"] <= m["eval/bok/share"] <= m["eval/bok/share_ci95_high"]
    assert m["eval/bok/n_prompts"] == 6 and m["eval/bok/k"] == 4
    assert not any("persona" in key for key in m)
    assert best_of_k_metrics(examples, [torch.tensor(r, dtype=torch.float) for r in rewards]) == m   # seeded
    assert "the RM keeps 0.538 of the oracle's gain (95% CI" in describe(m)


def test_no_gain_leaves_share_out_and_no_gold_gives_nothing():
    m = best_of_k_metrics([ex("arithmetic", [1, 1], 1), ex("arithmetic", [3, 3], 2)], [[0, 1], [1, 0]])
    assert m["eval/bok/random"] == m["eval/bok/rm"] == m["eval/bok/oracle"] == 0.5
    assert not any("share" in key for key in m)
    assert "keeps" not in describe(m) and describe({}) == ""
    assert best_of_k_metrics([ex("persona", None, 1)], [[0, 1]]) == {}
