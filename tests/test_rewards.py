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


def test_verifier_and_format_on_every_family():
    from reward.verifiers import extract_answers, format_reward, verifier_reward
    from stages.data.tasks import FAMILIES, make_tasks
    for family in FAMILIES:
        task = make_tasks(family, 1, 0, "test")[0]
        reference = task.messages[-1]["content"] + "<|end|>"
        wrong = task.messages[-1]["content"].rsplit("Answer:", 1)[0] + "Answer: zzz 12345<|end|>"
        unfinished = task.messages[-1]["content"]  # no <|end|>: right answer, badly formed turn
        assert verifier_reward(["p"] * 3, [reference, wrong, unfinished], tasks=[task] * 3) == [1.0, 0.0, 1.0], family
        assert format_reward(["p"] * 3, [reference, wrong, unfinished]) == [1.0, 1.0, 0.0], family
        assert extract_answers([reference])[0].lower() == task.answer.lower(), family


def test_verifier_from_answer_column():
    from reward.verifiers import verifier_reward
    got = verifier_reward(["p"] * 4, ["x\nAnswer: 1,024<|end|>", "Answer: 7", "no answer", "Answer: Paris"],
                          answers=["1024", "8", "1", "paris"])
    assert got == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(UserError, match="'verifier' needs tasks"):
        verifier_reward(["p"], ["Answer: 1"])


def test_mix_with_builtin_parts():
    from stages.data.tasks import make_tasks
    task = make_tasks("arithmetic", 1, 0, "test")[0]
    good = task.messages[-1]["content"] + "<|end|>"
    total, parts = RewardMix({"verifier": 1.0, "format": 0.2})(["p", "p"], [good, "Answer: -1"], tasks=[task, task])
    assert parts == {"verifier": [1.0, 0.0], "format": [1.0, 0.0]}
    assert total == pytest.approx([1.2, 0.0])
