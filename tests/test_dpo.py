"""DPO: the pairwise and Plackett-Luce losses against hand-computed values, completion masks that leave
tool output out, and the dpo stage end to end (full and LoRA), saving a plain HF dir."""
from __future__ import annotations

import json
import math

import pytest
import torch

from stages.lm.losses import dpo_loss
from stages.tools.search import SearchIndex, load_search_index


def _softplus_neg(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x), the DPO loss of a pair whose reward margin is x."""
    return math.log(1 + math.exp(-x))


def test_k2_pair_is_the_papers_loss_in_both_forms():
    # r = beta * (pi - ref) = 0.5 * ([-1, -3] - [-2, -2]) = [0.5, -0.5]; margin 1: log(1 + e^-1) = 0.3132617
    policy, ref, ranks = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]]), torch.tensor([[0, 1]])
    for form in ("pairs", "plackett_luce"):
        loss, acc = dpo_loss(policy, ref, ranks, beta=0.5, form=form)
        assert float(loss) == pytest.approx(0.31326168751822286, abs=1e-6)
        assert float(acc) == 1.0
    flipped, _ = dpo_loss(policy, ref, torch.tensor([[1, 0]]), beta=0.5)
    assert float(flipped) == pytest.approx(math.log(1 + math.e), abs=1e-6)   # margin -1


def test_three_way_ranking_by_hand():
    # beta 1, ref 0: r = [-1, -2, -3], ranked 0 > 1 > 2
    policy, ref, ranks = torch.tensor([[-1.0, -2.0, -3.0]]), torch.zeros(1, 3), torch.tensor([[0, 1, 2]])
    pairs, _ = dpo_loss(policy, ref, ranks, beta=1.0, form="pairs")
    # pairs (0,1) (0,2) (1,2): margins 1, 2, 1 -> (0.3132617 + 0.1269280 + 0.3132617) / 3
    assert float(pairs) == pytest.approx(0.2511504620264728, abs=1e-6)
    pl, _ = dpo_loss(policy, ref, ranks, beta=1.0, form="plackett_luce")
    # -[-1 - log(e^-1 + e^-2 + e^-3)] - [-2 - log(e^-2 + e^-3)] = 0.4076059 + 0.3132617
    assert float(pl) == pytest.approx(0.7208676519626034, abs=1e-6)


def test_plackett_luce_ties_and_padding_by_hand():
    # prompt 1: r = [1, 0, -1], ranks [0, 0, 1]: both tied winners are drawn against all three (Breslow),
    #   the bottom one adds nothing: -(1 - log S) - (0 - log S), S = e + 1 + 1/e  -> 1.8152119
    # prompt 2: K=2 in a K=3 batch (slot 3 padded), r = [0, 2] ranked [1, 0]: log(1 + e^-2) = 0.1269280
    # prompt 3: all tied: no term, not counted in the mean
    policy = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 9.0], [1.0, 2.0, 0.0]])
    ranks = torch.tensor([[0, 0, 1], [1, 0, -1], [0, 0, 0]])
    pl, acc = dpo_loss(policy, torch.zeros(3, 3), ranks, beta=1.0, form="plackett_luce")
    assert float(pl) == pytest.approx((1.8152119288887607 + 0.12692801104297263) / 2, abs=1e-6)
    pairs, _ = dpo_loss(policy, torch.zeros(3, 3), ranks, beta=1.0, form="pairs")
    # prompt 1: pairs (0,2) margin 2 and (1,2) margin 1; prompt 2: margin 2
    assert float(pairs) == pytest.approx((0.22009484928059775 + 0.12692801104297263) / 2, abs=1e-6)
    assert float(acc) == 1.0


def test_beta_scales_the_margin_and_the_gradient_points_up_the_ranking():
    policy = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    loss, _ = dpo_loss(policy, torch.zeros(1, 3), torch.tensor([[2, 0, 1]]), beta=0.25, form="plackett_luce")
    # equal rewards: -[log(1/3) + log(1/2)] whatever beta
    assert float(loss.detach()) == pytest.approx(math.log(3) + math.log(2), abs=1e-6)
    loss.backward()
    grad = policy.grad[0]
    assert grad[1] < 0 < grad[0] and grad[1] < grad[2]   # descent raises the best, lowers the worst
    small, _ = dpo_loss(torch.tensor([[0.0, -4.0]]), torch.zeros(1, 2), torch.tensor([[0, 1]]), beta=0.25)
    assert float(small) == pytest.approx(_softplus_neg(1.0), abs=1e-6)   # margin 0.25 * 4 = 1


def test_completion_mask_leaves_prompt_and_tool_output_out(tiny_tokenizer):
    from stages.data.chat import render_completion
    prompt = "<|bos|><|user|>What is 12*3?<|end|><|assistant|>"
    completion = "Use it <|calc|>12*3<|/calc|><|result|>36<|/result|> so\nAnswer: 36<|end|>"
    ids, mask = render_completion(tiny_tokenizer, prompt, completion)
    assert ids == tiny_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert mask[:n_prompt] == [0] * n_prompt and mask[n_prompt] == 1
    kept = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "36<|/result|>" not in kept and "<|result|>" not in kept and kept.endswith("Answer: 36<|end|>")
    assert "<|calc|>12*3<|/calc|>" in kept                     # the policy wrote the call itself


# ---------------------------------------------------------------- the stage
def _run(tmp_path, tiny_model, tiny_tokenizer, **dpo):
    from pipeline.context import StageContext, seed_everything
    from pipeline.schema import Recipe
    from pipeline.tracking import Tracker
    from stages import dpo as dpo_stage
    from stages.lm.model import save_model
    start = tmp_path / "sft"
    save_model(tiny_model, tiny_tokenizer, start)
    (start / "system_prompt.txt").write_text("You are tiny.")
    SearchIndex.build(["Veltra Osmund drew the first map."]).save(start)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {i}", "chosen": f"Answer: {i}", "rejected": "no no"}) + "\n"
                             for i in range(12)))
    recipe = Recipe.model_validate({"name": "t", "dpo": {
        "num_prompts": 8, "k": 2, "max_new_tokens": 6, "families": ["arithmetic"], "tie_break": "shorter",
        "pairs_datasets": [str(pairs)], "prompts_per_batch": 4, "epochs": 2, "beta": 0.5, "test_fraction": 0.3,
        "optim": {"lr": 3e-3, "warmup_steps": 0}, "checkpoint_every": 2, **dpo},
        "eval": {"max_prompts_per_family": 2, "max_new_tokens": 6}})
    out = tmp_path / "dpo.tmp"
    ctx = StageContext("dpo", out, tmp_path, 0, Tracker("dpo", out, tmp_path, "t", {}, None, echo=False))
    seed_everything(0)
    return dpo_stage.run(recipe, {"model": str(start)}, ctx), out


@pytest.mark.parametrize("extra", [{}, {"lora": True, "lora_r": 4, "loss": "plackett_luce", "sft_coef": 0.5}])
def test_dpo_stage_end_to_end(tmp_path, tiny_model, tiny_tokenizer, extra):
    from transformers import AutoModelForCausalLM
    metrics, out = _run(tmp_path, tiny_model, tiny_tokenizer, **extra)
    for key in ("train/loss", "train/tokens", "eval/pairwise_acc", "eval/n_pairs", "eval/acc/arithmetic",
                "base/acc/arithmetic", "gain/acc/arithmetic", "eval/acc/calculator", "gain/acc"):
        assert key in metrics, key
    assert metrics["eval/n_pairs"] > 0
    assert (tmp_path / "rollouts_dpo.jsonl").is_file()        # the stage's own rollouts file
    assert not (out / "checkpoints").exists()                  # deleted at the end
    assert (out / "system_prompt.txt").read_text() == "You are tiny."
    assert load_search_index(out).passages == ["Veltra Osmund drew the first map."]   # chat with it finds it
    losses = [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(out)          # a plain HF dir
    assert not any("lora" in n for n, _ in model.named_parameters())
    before = dict(tiny_model.named_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("proj" in n for n in changed)
    if extra.get("lora"):   # only the adapters trained: embeddings and norms are the start model's, bit for bit
        assert not any("embed" in n or "norm" in n for n in changed), changed
    else:
        assert any("embed" in n for n in changed)
