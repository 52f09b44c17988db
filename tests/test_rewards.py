"""Reward parts: verifiers per family, format reward, weighted mixes, user rewards by import path."""
from __future__ import annotations

import sys

import pytest

from pipeline.errors import UserError
from reward.combine import RewardMix, import_reward


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, **kw):\n"
        "    return [-len(c) / 10 for c in completions]\n"
        "def wrong_len(prompts, completions, **kw):\n"
        "    return [1.0]\n"
        "def sees_fields(prompts, completions, answers=None, **kw):\n"
        "    return [float(a == c) for a, c in zip(answers, completions)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_mix_weights_and_parts(user_module):
    mix = RewardMix({"my_rewards:brevity": 2.0, "my_rewards:sees_fields": 0.5})
    total, parts = mix(["p1", "p2"], ["abcde", "x"], answers=["abcde", "y"])
    assert parts["my_rewards:brevity"] == [-0.5, -0.1]
    assert parts["my_rewards:sees_fields"] == [1.0, 0.0]
    assert total == pytest.approx([2 * -0.5 + 0.5, 2 * -0.1])
    logged = RewardMix.log_metrics(total, parts)
    assert logged["reward/my_rewards.brevity"] == pytest.approx(-0.3)
    assert logged["reward/total"] == pytest.approx((total[0] + total[1]) / 2)


def test_bad_reward_specs_are_user_errors(user_module):
    with pytest.raises(UserError, match="rl.rewards: unknown reward 'verfier'"):
        RewardMix({"verfier": 1.0})
    with pytest.raises(UserError, match="cannot import module 'no_such_mod'"):
        import_reward("no_such_mod:f")
    with pytest.raises(UserError, match="has no function 'nope'"):
        import_reward("my_rewards:nope")
    with pytest.raises(UserError, match="returned 1 values for 2 completions"):
        RewardMix({"my_rewards:wrong_len": 1.0})(["a", "b"], ["a", "b"])
    with pytest.raises(UserError, match="needs a trained reward model"):
        RewardMix({"rm": 1.0})
