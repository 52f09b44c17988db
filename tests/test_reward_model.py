"""The rm stage: the K-way loss by hand, K forward passes per prompt, training, centring, the saved dir."""
from __future__ import annotations

import json
import math

import pytest
import torch

from stages.lm.losses import kway_ranking_loss


def sig_loss(d: float) -> float:
    return -math.log(1 / (1 + math.exp(-d)))


def test_kway_loss_is_the_mean_over_all_pairs_by_hand():
    rewards = torch.tensor([[1.0, 0.5, -1.0]])
    loss, acc = kway_ranking_loss(rewards, torch.tensor([[0, 1, 2]]))
    want = (sig_loss(1.0 - 0.5) + sig_loss(1.0 + 1.0) + sig_loss(0.5 + 1.0)) / 3   # C(3,2) = 3 pairs
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert acc.item() == 1.0
    # order best..worst given as ranks: completion 2 best, then 0, then 1
    loss, acc = kway_ranking_loss(rewards, torch.tensor([[1, 2, 0]]))
    want = (sig_loss(-1.0 - 1.0) + sig_loss(-1.0 - 0.5) + sig_loss(1.0 - 0.5)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert acc.item() == pytest.approx(1 / 3)


def test_kway_loss_ties_padding_and_per_prompt_weighting():
    rewards = torch.tensor([[2.0, 0.0, 1.0], [0.3, -0.2, 9.0]])
    ranks = torch.tensor([[0, 1, 1], [0, 1, -1]])          # a tie (no pair); a K=2 prompt padded to 3
    loss, _ = kway_ranking_loss(rewards, ranks)
    first = (sig_loss(2.0 - 0.0) + sig_loss(2.0 - 1.0)) / 2
    second = sig_loss(0.3 + 0.2)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)   # each prompt weighs the same
    all_tied, _ = kway_ranking_loss(rewards, torch.zeros_like(ranks))
    assert all_tied.item() == 0.0


def _seq_model(tiny_model_cfg, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from stages.lm.model import build_config
    torch.manual_seed(0)
    config = build_config(tiny_model_cfg, tiny_tokenizer)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config)


def test_one_forward_per_completion_not_per_pair(tiny_model_cfg, tiny_tokenizer):
    from stages.reward_model import ranking_loss_step
    from stages.rm.data import Example, collate
    model = _seq_model(tiny_model_cfg, tiny_tokenizer)
    seqs = [[5, 6, 7, 8], [5, 6, 9], [5, 10, 11, 12, 13]]
    examples = [Example(seqs, [0, 1, 2], "f", None, "t"), Example(seqs[:2], [1, 0], "f", None, "t")]
    rows, calls = [], []

    def count(module, args, kwargs, out):
        calls.append(1)
        rows.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_hook(count, with_kwargs=True)
    loss, _ = ranking_loss_step(model, collate(examples, tiny_tokenizer.pad_token_id))
    handle.remove()
    assert calls == [1] and rows == [3 + 2]              # K per prompt: 5 sequences, not 2*C(3,2) + 2*C(2,2) = 8
    with torch.no_grad():                                 # the same loss from each sequence scored alone
        r = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
    want = ((sig_loss(r[0] - r[1]) + sig_loss(r[0] - r[2]) + sig_loss(r[1] - r[2])) / 3 + sig_loss(r[1] - r[0])) / 2
    assert loss.item() == pytest.approx(want, rel=1e-4)


def _human_log(path, n_prompts: int):
    """Rankings with a learnable order: a finished 'Answer:' line > an unfinished one > rambling."""
    with open(path, "w") as fh:
        for p in range(n_prompts):
            a, b = p % 7 + 1, p % 5 + 2
            texts = [f"{a} plus {b} is {a + b}.\nAnswer: {a + b}<|end|>", f"the the {a} {b}", f"{a}+{b}\nAnswer: {a + b}"]
            fh.write(json.dumps({"event": "rank", "id": f"s{p}", "prompt_id": f"q{p}", "order": [0, 2, 1],
                                 "family": "arithmetic", "completions": texts,
                                 "prompt_messages": [{"role": "user", "content": f"What is {a} + {b}?"}]}) + "\n")


def test_rm_stage_trains_centres_and_saves_a_loadable_dir(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    from pipeline.context import StageContext
    from pipeline.schema import Recipe
    from pipeline.tracking import Tracker
    from reward.model_scorer import load_reward_fn
    from stages.lm.model import save_model
    from stages.reward_model import run
    sft = tmp_path / "sft"
    save_model(tiny_model, tiny_tokenizer, sft)
    _human_log(tmp_path / "rankings.jsonl", 40)
    # the rollouts the rankings came from: their answers give gold tiers, so best-of-K is measured too
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps({
        "id": f"q{p}", "family": "arithmetic", "answer": str(p % 7 + 1 + p % 5 + 2), "meta": {}, "reference": "",
        "prompt_messages": [{"role": "user", "content": f"What is {p % 7 + 1} + {p % 5 + 2}?"}],
        "completions": []}) + "\n" for p in range(40)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {i}", "chosen": f"Answer: {i}", "rejected": "no"}) + "\n"
                             for i in range(10)))
    recipe = Recipe(name="t", rm={"rankers": ["human"], "rankings_file": str(tmp_path / "rankings.jsonl"),
                                  "pairs_datasets": [str(pairs)], "epochs": 6, "prompts_per_batch": 4,
                                  "optim": {"lr": 3e-3, "warmup_steps": 2}, "test_fraction": 0.25})
    out = tmp_path / "rm"
    ctx = StageContext("rm", out, tmp_path, 0, Tracker("rm", out, tmp_path, "t", {}, None, echo=False))
    metrics = run(recipe, {"model": str(sft)}, ctx)
    for key in ("eval/pairwise_acc", "eval/top1_acc", "eval/chance", "eval/n_pairs", "eval/reward_offset",
                "eval/pairwise_acc/arithmetic"):
        assert key in metrics
    assert metrics["eval/n_pairs"] > 0 and metrics["eval/chance"] == 0.5
    assert metrics["eval/pairwise_acc"] > 0.8                # the surface order is easy to learn
    # gold: the finished answer is right and well formed, the other two are not -> random 1/3, oracle 1
    assert metrics["eval/bok/random/arithmetic"] == pytest.approx(1 / 3) and metrics["eval/bok/oracle"] == 1.0
    assert 0 <= metrics["eval/bok/rm"] <= 1 and "eval/bok/share" in metrics and metrics["eval/bok/n_prompts"] > 0
    assert (out / "reward_hist.png").stat().st_size > 1000
    losses = [json.loads(x)["train/loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in x]
    assert losses[-1] < losses[0]
    raw = AutoModelForSequenceClassification.from_pretrained(out)
    assert raw.config.num_labels == 1 and raw.config.pad_token_id == tiny_tokenizer.pad_token_id
    rm = load_reward_fn(out)
    prompt = "<|bos|><|user|>What is 3 + 4?<|end|><|assistant|>"
    good, bad = rm([prompt, prompt], ["3 plus 4 is 7.\nAnswer: 7<|end|>", "the the 3 4"])
    assert good > bad
    ids = tiny_tokenizer(prompt + "the the 3 4", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logit = raw(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert bad == pytest.approx(logit - raw.config.reward_offset, abs=1e-4)   # centring lives in the config


def test_tokenizer_mismatch_is_a_user_error(tmp_path, tiny_model, tiny_tokenizer):
    from pipeline.errors import UserError
    from stages.lm.bpe import train_bpe
    from stages.lm.model import save_model
    from stages.rm.data import load_reward_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    from tests.conftest import TRAIN_TEXT
    other = train_bpe(TRAIN_TEXT, vocab_size=330)          # same special tokens, other ids
    assert other.eos_token_id != tiny_tokenizer.eos_token_id
    other.save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="share the SFT model's tokenizer"):
        load_reward_model(str(tmp_path / "m"), "cpu")


def test_ranking_metrics_by_hand():
    from stages.rm.data import Example
    from stages.rm.metrics import ranking_metrics
    examples = [Example([[1]] * 3, [0, 1, 2], "a", [3, 1, 0], "verifier"),
                Example([[1]] * 2, [0, 1], "b", [3, 1], "verifier")]
    m = ranking_metrics(examples, [torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert m["eval/pairwise_acc"] == 0.75 and m["eval/n_pairs"] == 4 and m["eval/chance"] == 0.5
    assert m["eval/pairwise_acc/a"] == 1.0 and m["eval/pairwise_acc/b"] == 0.0 and m["eval/n_pairs/a"] == 3
    assert m["eval/top1_acc"] == 0.5 and m["eval/top1_chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["eval/gold_pairwise_acc_correctness"] == pytest.approx(2 / 3) and m["eval/gold_n_pairs_correctness"] == 3
    assert m["eval/gold_pairwise_acc_format"] == 1.0 and m["eval/gold_n_pairs_format"] == 1
    assert m["eval/gold_pairwise_acc_ci95_low"] <= m["eval/gold_pairwise_acc"] <= m["eval/gold_pairwise_acc_ci95_high"]


def test_bootstrap_interval_resamples_prompts_not_pairs():
    from stages.rm.metrics import prompt_bootstrap_ci
    assert prompt_bootstrap_ci([[1.0, 1.0], [1.0]]) == (1.0, 1.0)
    # the same 50% of 400 pairs: in 20 prompts that are all right or all wrong, or in 400 one-pair prompts
    clustered = [[float(i % 2)] * 20 for i in range(20)]
    spread = [[float(i % 2)] for i in range(400)]
    lo_c, hi_c = prompt_bootstrap_ci(clustered)
    lo_s, hi_s = prompt_bootstrap_ci(spread)
    assert lo_c < 0.5 < hi_c and lo_s < 0.5 < hi_s
    assert hi_c - lo_c > 0.3 and hi_s - lo_s < 0.15     # 20 effective samples, not 400
    assert prompt_bootstrap_ci(clustered) == (lo_c, hi_c)  # seeded


def test_held_out_split_is_by_prompt_text_so_a_repeated_prompt_is_on_one_side():
    from reward.ranking import Ranked
    from stages.rm.data import is_test, split_key
    question = [{"role": "user", "content": "Who made you?"}]
    # the same question drawn 40 times under different ids (identity/unknown prompts come from small pools)
    repeats = [Ranked(f"{i:05d}-abc", "identity", question, ["a", "b"], [0, 1], "verifier") for i in range(40)]
    assert len({is_test(split_key(r), 0.5) for r in repeats}) == 1
    assert len({is_test(r.prompt_id, 0.5) for r in repeats}) == 2      # what splitting by id did: both sides
    others = [Ranked(f"q{i}", "identity", [{"role": "user", "content": f"Question {i}?"}], ["a"], [0], "v")
              for i in range(200)]
    assert 60 < sum(is_test(split_key(r), 0.5) for r in others) < 140  # distinct prompts still split ~evenly
    pair = Ranked("hh:3", "pairs:hh", None, ["x", "y"], [0, 1], "pairs:hh")
    assert split_key(pair) == "hh:3"                                    # no prompt: the id


def test_process_labels_mark_tokens_up_to_the_first_mistake():
    from stages.rm.data import process_labels
    prompt, reference = [1, 2], [10, 11, 12, 13]
    assert process_labels(prompt + [10, 11, 99, 13], [10, 11, 99, 13], reference, tier=1) == [-1, -1, 1, 1, 0, 0]
    assert process_labels(prompt + [10, 11, 12], [10, 11, 12], reference, tier=0) == [-1, -1, 1, 1, 0]  # cut short
    assert process_labels(prompt + [7, 8], [7, 8], reference, tier=3) == [-1, -1, 1, 1]     # right in other words
    assert process_labels([11, 99, 13], [10, 11, 99, 13], reference, tier=1) == [1, 0, 0]   # seq cut on the left
    assert process_labels(prompt + [10, 5], [10, 11], reference, tier=1) == [-1] * 4        # not this completion


def test_process_loss_is_bce_over_scored_tokens():
    from stages.lm.losses import process_loss
    scores = torch.tensor([[0.3, 2.0, -1.0], [0.5, 0.7, 0.0]])
    labels = torch.tensor([[-1, 1, 0], [-1, -1, -1]])
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert process_loss(scores, labels).item() == pytest.approx(want, rel=1e-6)
    assert process_loss(scores, torch.full_like(labels, -1)).item() == 0.0


def test_process_coef_adds_the_per_token_loss_from_the_same_forward(tiny_model_cfg, tiny_tokenizer):
    from stages.lm.losses import process_loss
    from stages.reward_model import ranking_loss_step
    from stages.rm.data import Example, collate
    model = _seq_model(tiny_model_cfg, tiny_tokenizer).eval()
    seqs = [[5, 6, 7, 8], [5, 6, 9]]
    labels = [[-1, -1, 1, 1], [-1, -1, 0]]
    batch = collate([Example(seqs, [0, 1], "f", [3, 1], "t", labels)], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        plain, _ = ranking_loss_step(model, batch)
        mixed, _ = ranking_loss_step(model, batch, process_coef=2.0)
        per_token = [model.score(model.model(input_ids=torch.tensor([s])).last_hidden_state)[0, :, 0] for s in seqs]
    width = max(map(len, seqs))
    scores = torch.stack([torch.nn.functional.pad(t, (0, width - len(t))) for t in per_token])
    want = plain + 2.0 * process_loss(scores, batch["token_labels"])
    assert mixed.item() == pytest.approx(want.item(), rel=1e-5)
    assert per_token[0][-1].item() == pytest.approx(model(input_ids=torch.tensor([seqs[0]])).logits[0, 0].item(), rel=1e-5)


def test_encode_labels_only_prompts_with_a_reference_and_tiers(tiny_tokenizer):
    from reward.ranking import Ranked
    from stages.rm.data import collate, encode
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    right, wrong = "2+3:\nAnswer: 5<|end|>", "2+3:\nAnswer: 6<|end|>"
    checked = Ranked("a", "arithmetic", prompt, [right, wrong], [0, 1], "verifier", gold=[3, 1], reference=right)
    human = Ranked("b", "arithmetic", prompt, [right, wrong], [0, 1], "human")
    examples = encode([checked, human], tiny_tokenizer, 512, process=True)
    assert examples[1].labels is None
    good, bad = examples[0].labels
    assert good[-1] == 1 and bad.count(0) == 2 and bad[-2:] == [0, 0]  # 0 from the wrong digit: "6", "<|end|>"
    assert min(good) == -1 and good.index(1) == bad.index(1)        # the prompt is not scored
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    assert batch["token_labels"].shape == batch["input_ids"].shape
    assert (batch["token_labels"][2:] == -1).all()                  # the human-ranked prompt: no labels
    assert encode([checked], tiny_tokenizer, 512)[0].labels is None  # process=False (the held-out side)
