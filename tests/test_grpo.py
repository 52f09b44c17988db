"""GRPO: tool tokens masked, one step changes parameters, the KL leash holds with a constant reward,
and the rl stage runs end to end (eval before/after, readiness, HF dir out)."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from pipeline.schema import RLStage
from stages import grpo
from stages.generation import Completion, generate
from stages.losses import group_advantages


class _Acc:  # the bits of accelerate.Accelerator the update uses, for a single CPU process
    device = torch.device("cpu")
    process_index = 0

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def unwrap_model(self, model):
        return model


def _rollout(model, tok, n_prompts=2, G=4, seed=0):
    prompts = [tok("<|bos|><|user|>What is 1 + 2?<|end|><|assistant|>", add_special_tokens=False)["input_ids"],
               tok("<|bos|><|user|>Spell cat<|end|><|assistant|>", add_special_tokens=False)["input_ids"]][:n_prompts]
    out = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, num_samples=G, use_tools=False, seed=seed)
    return [c for group in out for c in group]


def test_collate_masks_tool_tokens_and_padding():
    comps = [Completion([5, 6, 7], [10, 11, 12, 13], [0, 1, 1, 0], "", True), Completion([5], [20], [0], "", True)]
    b = grpo.collate(comps, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 10, 11, 12, 13], [5, 20, 0, 0, 0, 0, 0]]
    assert b["completion_mask"].tolist() == [[0, 0, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0]]


def test_logps_ignore_masked_positions(tiny_model, tiny_tokenizer):
    comps = _rollout(tiny_model, tiny_tokenizer, n_prompts=1, G=2)
    comps[0].tool_mask = [1] * len(comps[0].completion_ids)   # pretend the tool wrote all of it
    batch = grpo.collate(comps, tiny_tokenizer.pad_token_id)
    logps = grpo.batched_logps(tiny_model, batch, micro=1)
    assert torch.all(logps[0] == 0) and torch.all(logps[1][batch["completion_mask"][1] > 0] < 0)


def _cfg(**kw):
    return RLStage(**{"num_generations": 4, "micro_batch_size": 3, "optim": {"lr": 1e-2, "grad_clip": 1.0}, **kw})


def test_one_step_changes_parameters_and_matches_micro_batching(tiny_model, tiny_tokenizer):
    comps = _rollout(tiny_model, tiny_tokenizer)
    batch = grpo.collate(comps, tiny_tokenizer.pad_token_id)
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1]), 4)
    grads = []
    for micro in (8, 3):  # same loss and gradient whether the batch is split or not
        model = copy.deepcopy(tiny_model)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        model.zero_grad()
        cfg = _cfg(micro_batch_size=micro)
        stats = grpo.grpo_update(model, batch, adv, cfg, SimpleNamespace(step=lambda: None, zero_grad=lambda **k: None),
                                 _Acc(), micro=micro)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    model = copy.deepcopy(tiny_model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grpo.grpo_update(model, batch, adv, _cfg(), opt, _Acc(), micro=3)
    changed = [n for (n, p), p0 in zip(model.named_parameters(), tiny_model.parameters()) if not torch.equal(p, p0)]
    assert changed and stats["clipfrac"] == 0.0


def _kl(policy, ref, batch):
    """Mean squared log-ratio on the sampled tokens: 0 iff the two policies agree there."""
    lp, rp = grpo.batched_logps(policy, batch, 8), grpo.batched_logps(ref, batch, 8)
    return float(((lp - rp) ** 2 * batch["completion_mask"]).sum() / batch["completion_mask"].sum())


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_constant_reward_keeps_policy_at_reference(tiny_model, tiny_tokenizer, beta):
    ref = copy.deepcopy(tiny_model).eval()
    policy = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    with torch.no_grad():  # start away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    start = copy.deepcopy(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    batch = grpo.collate(_rollout(ref, tiny_tokenizer), tiny_tokenizer.pad_token_id)
    adv = group_advantages(torch.ones(8), 4)   # constant reward: zero advantage everywhere
    kl_before = _kl(policy, ref, batch)
    for _ in range(15):
        ref_logps = grpo.batched_logps(ref, batch, 8)
        grpo.grpo_update(policy, batch, adv, _cfg(beta=beta), opt, _Acc(), ref_logps=ref_logps, micro=8)
    kl_after = _kl(policy, ref, batch)
    if beta == 0.0:  # nothing to learn: the policy does not move
        assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), start.parameters()))
    else:            # only the KL term acts: it pulls the policy back towards the reference
        assert kl_after < 0.5 * kl_before


def test_rewarded_samples_gain_probability(tiny_model, tiny_tokenizer):
    batch = grpo.collate(_rollout(tiny_model, tiny_tokenizer), tiny_tokenizer.pad_token_id)
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 1])
    adv = group_advantages(rewards, 4)
    policy = copy.deepcopy(tiny_model)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    before = grpo.batched_logps(policy, batch, 8).sum(-1)
    for _ in range(3):
        grpo.grpo_update(policy, batch, adv, _cfg(), opt, _Acc(), micro=8)
    delta = grpo.batched_logps(policy, batch, 8).sum(-1) - before
    assert delta[0] > delta[1:4].max() and delta[7] > delta[4:7].max()
