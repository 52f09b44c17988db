"""RL losses in stages/lm/losses.py against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from stages.lm import losses as L


def test_group_advantages_scaled_and_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean .25, centred [.75, -.25, -.25, -.25], unbiased std .5 -> [1.5, -.5, -.5, -.5]
    adv = L.group_advantages(rewards, group_size=4, scale=True, eps=0.0)
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]))
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards carry no signal
    dr = L.group_advantages(rewards, group_size=4, scale=False)
    assert torch.allclose(dr[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert L.zero_variance_fraction(rewards, 4) == 0.5


def test_group_advantages_groups_are_consecutive():
    rewards = torch.tensor([0.0, 2.0, 10.0, 10.0])
    adv = L.group_advantages(rewards, group_size=2, scale=False)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_kl_k3_hand_value_and_zero_at_reference():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # exp(log .5) - log .5 - 1 = .5 + .693147 - 1
    assert torch.allclose(L.kl_k3(logp, ref), torch.tensor([0.5 + math.log(2) - 1.0]))
    assert float(L.kl_k3(ref, ref)) == 0.0
    assert float(L.kl_k3(torch.tensor([-3.0]), torch.tensor([-1.0]))) > 0


def test_clipped_policy_loss_four_cases():
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    per_token, clipped = L.clipped_policy_loss(logp, old, adv, clip_eps=0.2)
    # r=1.5,A=1 -> -1.2 (clipped); r=1.5,A=-1 -> 1.5; r=.5,A=1 -> -.5; r=.5,A=-1 -> .8 (clipped)
    assert torch.allclose(per_token, torch.tensor([[-1.2, 1.5, -0.5, 0.8]]))
    assert torch.equal(clipped, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))


def test_sequence_advantages_broadcast_and_gradient_sign():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, stats = L.ppo_policy_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    loss.backward()
    # at ratio 1: d(-r*A)/dlogp = -A / (N*T) with token normalisation
    assert torch.allclose(logp.grad, torch.tensor([[-1.0] * 3, [1.0] * 3]) / 6)
    assert stats["clipfrac"] == 0.0


def test_aggregate_token_vs_sequence():
    per_token = torch.tensor([[1.0, 2.0, 7.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(L.aggregate_tokens(per_token, mask, "token")) == pytest.approx(2.0)       # (1+2+3)/3
    assert float(L.aggregate_tokens(per_token, mask, "sequence")) == pytest.approx(2.25)   # (1.5+3)/2
    # micro-batch normalisers: two halves summed equal the whole
    halves = sum(L.aggregate_tokens(per_token[i:i + 1], mask[i:i + 1], "token", num_tokens=3.0) for i in range(2))
    assert float(halves) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        L.aggregate_tokens(per_token, mask, "tokens")


def test_grpo_loss_adds_beta_k3():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    loss, stats = L.grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), ref_per_token_logps=ref, beta=0.1)
    assert float(loss) == pytest.approx(0.1 * (0.5 + math.log(2) - 1.0), rel=1e-5)
    assert stats["kl"] == pytest.approx(0.5 + math.log(2) - 1.0, rel=1e-5)


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 0.1]])
    old = torch.zeros(1, 2)
    returns = torch.ones(1, 2)
    # token 1: unclipped 0, clipped (.2-1)^2=.64 -> .64; token 2: both .81 -> .81; 0.5 * mean = .3625
    loss, clipfrac = L.value_loss(values, old, returns, torch.ones(1, 2), clip_range=0.2)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert clipfrac == pytest.approx(0.5)


def test_gae_hand_values():
    adv, ret = L.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.125, 0.25, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[0.625, 0.75, 1.0]]))
    adv, ret = L.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.3]]), torch.ones(1, 2), gamma=0.9, lam=1.0)
    # lam=1: returns are discounted reward sums: [0.9, 1.0]; A = R - V
    assert torch.allclose(ret, torch.tensor([[0.9, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[0.7, 0.7]]))


def test_gae_skips_masked_tool_tokens():
    rewards = torch.tensor([[0.0, 5.0, 1.0]])  # the reward on the masked token must be ignored
    adv, ret = L.gae(rewards, torch.tensor([[0.5, 9.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]]), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.25, 0.0, 0.5]]))
    assert torch.allclose(ret, torch.tensor([[0.75, 0.0, 1.0]]))


def test_whiten_masked():
    out = L.whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), eps=0.0)
    s = math.sqrt(1.5)  # 1 / sqrt(var 2/3)
    assert torch.allclose(out, torch.tensor([[-s, 0.0, s, 0.0]]))


def test_ppo_token_rewards_score_on_last_sampled_token():
    rewards, kl = L.ppo_token_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -2.0, -3.0]]),
                                      torch.tensor([[-1.5, -2.0, -2.0]]), torch.tensor([[1.0, 1.0, 0.0]]), beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 2.0, 0.0]]))


def test_adaptive_kl_beta():
    assert L.adaptive_kl_beta(0.1, observed_kl=12.0, target=6.0, n_steps=100, horizon=1000) == pytest.approx(0.1 * 1.02)
    assert L.adaptive_kl_beta(0.1, observed_kl=6.0, target=6.0, n_steps=100) == pytest.approx(0.1)
    assert L.adaptive_kl_beta(0.1, observed_kl=0.0, target=6.0, n_steps=100, horizon=100) == pytest.approx(0.08)
