"""GRPO: tool tokens masked, one step changes parameters, the KL leash holds with a constant reward,
and the rl stage runs end to end (eval before/after, readiness, HF dir out)."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from pipeline.schema import RLStage
from stages.lm.generation import Completion, generate
from stages.lm.losses import group_advantages
from stages.policy_gradient import grpo
from stages.policy_gradient.rollout import reference_overflow


class _Acc:  # the bits of accelerate.Accelerator the update uses, for a single CPU process
    device = torch.device("cpu")
    process_index, num_processes = 0, 1

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


def _stage_ctx(tmp_path):
    from pipeline.context import StageContext
    from pipeline.tracking import Tracker
    out = tmp_path / "rl.tmp"
    tracker = Tracker("rl", out, tmp_path, "t", {}, None, echo=False)
    return StageContext(stage="rl", out_dir=out, run_dir=tmp_path, seed=0, tracker=tracker)


def _recipe(**rl):
    from pipeline.schema import Recipe
    base = dict(max_steps=2, prompts_per_step=2, num_generations=2, max_new_tokens=6, eval_samples=2,
                families=["arithmetic"], readiness_min_signal=0.0, control=False, micro_batch_size=4)
    return Recipe(name="t", rl={**base, **rl}, eval={"max_prompts_per_family": 2, "max_new_tokens": 6})


def test_rl_stage_end_to_end(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from stages import rl
    from stages.lm.model import load_causal_lm, save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    (tmp_path / "len_reward.py").write_text("def score(prompts, completions, **kw):\n"
                                            "    return [len(c) / 10 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a user reward by import path: varies, so GRPO has signal
    ctx = _stage_ctx(tmp_path)
    recipe = _recipe(beta=0.1, rewards={"verifier": 1.0, "len_reward:score": 0.5})
    metrics = rl.run(recipe, {"policy": str(tmp_path / "sft")}, ctx)
    for key in ("eval/acc/arithmetic", "before/eval/acc/arithmetic", "gain/acc/arithmetic", "eval/pass@2/arithmetic",
                "eval/kl", "eval/length", "ready/signal_groups", "ready/pass@2", "train/kl", "train/steps",
                "reward/verifier", "reward/len_reward.score"):
        assert key in metrics, key
    assert metrics["before/eval/kl"] == pytest.approx(0.0, abs=1e-5)   # before RL the policy is the reference
    model, _ = load_causal_lm(ctx.out_dir)                              # an HF dir that loads
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), tiny_model.parameters()))
    rows = [json.loads(line) for line in (ctx.out_dir / "samples_after.jsonl").read_text().splitlines()]
    assert rows and {"family", "prompt", "completion", "correct"} <= set(rows[0])
    lines = [json.loads(line) for line in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/zero_var_groups" in r] == [1, 2]


def test_readiness_stops_a_hopeless_policy(tiny_model, tiny_tokenizer, tmp_path):
    from pipeline.errors import UserError
    from stages import rl
    from stages.lm.model import save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    with pytest.raises(UserError, match=r"rl.readiness_min_signal: only 0% .* policy is too weak: pass@2"):
        rl.run(_recipe(readiness_min_signal=0.1), {"policy": str(tmp_path / "sft")}, _stage_ctx(tmp_path))


def test_equal_compute_control_trains_for_the_time_budget(tiny_model, tiny_tokenizer, tmp_path):
    from pipeline.schema import Recipe
    from stages.lm.model import save_model
    from stages.policy_gradient.control import continue_sft, time_cosine
    assert time_cosine(0, 10, 0.1) == pytest.approx(1.0) and time_cosine(10, 10, 0.1) == pytest.approx(0.1)
    save_model(tiny_model, tiny_tokenizer, tmp_path / "sft")
    recipe = Recipe(name="t", sft={"families": ["arithmetic"], "builtin_train_per_family": 8, "micro_batch_size": 2,
                                   "max_length": 256})
    model, _, info = continue_sft(str(tmp_path / "sft"), recipe, wall_s=1.0, ctx=_stage_ctx(tmp_path))
    assert info["steps"] >= 1 and info["wall_s"] >= 1.0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), tiny_model.parameters()))


def test_reference_overflow_counts_answers_the_budget_cuts_off(tiny_tokenizer):
    from stages.data.special_tokens import END
    from stages.data.tasks import make_tasks
    tasks = make_tasks("arithmetic", 40, 0, "train")
    lengths = [len(tiny_tokenizer(t.messages[-1]["content"] + END, add_special_tokens=False)["input_ids"])
               for t in tasks]
    longest = max(lengths)
    assert reference_overflow(tiny_tokenizer, tasks, longest) == (0.0, longest)
    share, _ = reference_overflow(tiny_tokenizer, tasks, longest - 1)
    assert share == pytest.approx(sum(n == longest for n in lengths) / len(tasks)) and share > 0
    share, _ = reference_overflow(tiny_tokenizer, tasks, sorted(lengths)[len(lengths) // 2])
    assert 0 < share <= 0.5


def test_zero_advantage_rows_are_skipped_without_changing_the_gradient(tiny_model, tiny_tokenizer):
    from stages.lm import losses
    comps = _rollout(tiny_model, tiny_tokenizer)
    batch = grpo.collate(comps, tiny_tokenizer.pad_token_id)
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), 4)   # the second group has no signal
    assert (adv[4:] == 0).all() and (adv[:4] != 0).all()
    noop = SimpleNamespace(step=lambda: None, zero_grad=lambda **k: None)
    for loss_type in ("token", "sequence"):
        cfg = _cfg(loss_type=loss_type)
        ref_model = copy.deepcopy(tiny_model)   # the full-batch loss, every row through the model
        lp = grpo.completion_logps(ref_model, batch, cfg.temperature)
        loss, _ = losses.grpo_loss(lp, lp.detach(), adv, batch["completion_mask"], loss_type=loss_type)
        loss.backward()
        model = copy.deepcopy(tiny_model)
        seen = []
        model.register_forward_hook(lambda m, args, kwargs, out, seen=seen: seen.append(kwargs["input_ids"].size(0)),
                                    with_kwargs=True)
        grpo.grpo_update(model, batch, adv, cfg, noop, _Acc(), micro=8)
        assert seen == [4]                       # only the rows with an advantage ran forward/backward
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert (p.grad is None and q.grad is None) or torch.allclose(p.grad, q.grad, atol=1e-7)


def test_ratio_logps_are_the_sampling_distribution(tiny_model, tiny_tokenizer):
    """The logps GRPO puts in the ratio are log-probs of the distribution the sampler drew from: the
    logits over the tokenizer's vocabulary divided by the temperature, whatever the padding."""
    tok, T = tiny_tokenizer, 0.7
    prompts = [tok("<|bos|><|user|>What is 1 + 2?<|end|><|assistant|>", add_special_tokens=False)["input_ids"],
               tok("<|bos|><|user|>Spell strawberry please<|end|><|assistant|>", add_special_tokens=False)["input_ids"]]
    out = generate(tiny_model, tok, prompts, max_new_tokens=8, temperature=T, num_samples=3, use_tools=False, seed=1)
    comps = [c for group in out for c in group]
    batch = grpo.collate(comps, tok.pad_token_id)
    with torch.no_grad():
        lp = grpo.completion_logps(tiny_model, batch, T)
        for i, c in enumerate(comps):
            ids = torch.tensor([list(c.prompt_ids) + list(c.completion_ids)])
            logits = tiny_model(input_ids=ids).logits[0, :, :len(tok)].float() / T
            want = torch.log_softmax(logits, -1)[len(c.prompt_ids) - 1:-1].gather(
                -1, torch.tensor(c.completion_ids).unsqueeze(-1)).squeeze(-1)
            p = len(c.prompt_ids)
            assert torch.allclose(lp[i, p:p + len(c.completion_ids)], want, atol=1e-5)
            assert lp[i, :p].abs().sum() == 0 and lp[i, p + len(c.completion_ids):].abs().sum() == 0


def test_padded_vocab_logps_normalise_over_the_tokenizer(tiny_model_cfg, tiny_tokenizer):
    """With model.vocab_size padding, RL's log-probs use the tokens the sampler can draw (the rl stage
    masks the padded rows), so the ratio and KL compare the sampled distribution."""
    from stages.lm.model import build_model, mask_padded_vocab
    vocab = len(tiny_tokenizer)
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg.model_copy(update={"vocab_size": vocab + 64}), tiny_tokenizer)
    prompt = tiny_tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    comp = Completion(prompt, [5, 6, 7], [0, 0, 0], "", False)
    batch = grpo.collate([comp], tiny_tokenizer.pad_token_id)
    before = grpo.completion_logps(model, batch)
    mask_padded_vocab(model, vocab)
    after = grpo.completion_logps(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1, :vocab]
    want = torch.log_softmax(logits.float(), -1)[torch.arange(logits.size(0)), batch["input_ids"][0, 1:]]
    p = len(prompt)
    assert torch.allclose(after[0, p:], want[p - 1:], atol=1e-5)
    assert (after[0, p:] > before[0, p:]).all()          # the padded rows no longer take probability mass
