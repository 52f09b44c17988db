"""Benchmarks: answer extraction, the offline sample files, and multiple choice on a rigged model."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.errors import UserError
from stages.eval import benchmarks as B

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("text, expected", [
    ("#### 1,234", "1234"),
    ("She bakes 1200 + 34.\n#### 1,234 loaves in total.", "1234"),
    ("#### 72.0", "72"),
    ("#### -5", "-5"),
    ("#### $1,000,000.50 dollars", "1000000.5"),
    ("first #### 3 then #### 4 apples", "4"),          # the last marker wins
    ("I think.\nAnswer: 17\nThanks!", "17"),            # our chat format
    ("Answer: 5\nAnswer: 6 apples.", "6"),
    ("3 + 4 = 7, so he has 7 apples.", "7"),            # fallback: last number
    ("no digits here", None),
    ("#### none", None),
])
def test_gsm8k_answer_extraction(text, expected):
    assert B.extract_gsm8k_answer(text) == expected


def test_answers_match_numerically():
    assert B.answers_match("72", "72") and B.answers_match("72.0", "72") and B.answers_match("5.50", "5.5")
    assert B.answers_match(B.extract_gsm8k_answer("#### 72.00"), "72")
    assert not B.answers_match("71", "72")
    assert not B.answers_match(None, "72")


def test_offline_samples_load_in_every_format():
    gsm = B.load_benchmark("gsm8k", str(DATA / "gsm8k.jsonl"))
    assert [p.answer for p in gsm] == ["1234", "7", "13"]
    arc = B.load_benchmark("arc_easy", str(DATA / "arc.jsonl"))
    assert [c.gold for c in arc] == [0, 1, 2] and arc[2].choices == [" ruler", " scale", " thermometer"]
    assert arc[0].context.startswith("Question: Which of these") and arc[0].context.endswith("Answer:")
    hs = B.load_benchmark("hellaswag", str(DATA / "hellaswag.jsonl"))
    assert [c.gold for c in hs] == [0, 1] and len(hs[0].choices) == 4
    assert "[title]" not in hs[0].choices[3] and hs[0].context.startswith("Making tea: A man fills")
    mmlu = B.load_benchmark("mmlu", str(DATA / "mmlu.parquet"), limit=2)
    assert len(mmlu) == 2 and mmlu[1].choices[mmlu[1].gold] == " Mercury"
    assert "astronomy" in mmlu[1].context


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown"):
        B.load_benchmark("squad")
    with pytest.raises(UserError, match="no such file"):
        B.load_benchmark("gsm8k", str(tmp_path / "missing.jsonl"))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "hello"}\n')
    with pytest.raises(UserError, match="columns"):
        B.load_benchmark("arc_easy", str(wrong))


class RiggedLM(torch.nn.Module):
    """A real tiny Llama whose logits get +bias on a chosen set of token ids (context-independent)."""

    def __init__(self, base, preferred: set[int], bias: float = 30.0):
        super().__init__()
        self.base, self.config = base, base.config
        self.bias = torch.zeros(base.config.vocab_size)
        self.bias[sorted(preferred)] = bias

    def forward(self, input_ids, attention_mask=None):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask).logits
        return SimpleNamespace(logits=logits + self.bias)


QUESTIONS = [  # (question, choices, gold); the rig prefers the tokens of PREFERRED answers
    ("What colour is the sky?", ["blue", "green", "pink", "grey"], 0),
    ("Which is a fruit?", ["rock", "apple", "chair", "wolf"], 1),
    ("What do cows drink?", ["oil", "ink", "water", "fizz"], 2),
    ("Which animal barks?", ["dog", "cat", "owl", "fox"], 1),   # gold is cat; the rig prefers "dog"
]
PREFERRED = ["blue", "apple", "water", "dog"]


def test_multiple_choice_on_rigged_model_gives_known_score(tiny_model, tiny_tokenizer):
    def ids(text):
        return tiny_tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    preferred = {t for word in PREFERRED for t in ids(word)}
    # the rig is sound: every preferred answer is all-preferred tokens, every other choice is not
    for (_, choices, _), pick in zip(QUESTIONS, PREFERRED):
        for choice in choices:
            assert set(ids(choice)) <= preferred if choice == pick else not set(ids(choice)) <= preferred
    items = [B.Choice(context=f"Question: {q}\nAnswer:", choices=[" " + c for c in ch], gold=g)
             for q, ch, g in QUESTIONS]
    model = RiggedLM(tiny_model, preferred)
    metrics = B.evaluate_multiple_choice(model, tiny_tokenizer, items)
    assert metrics["acc"] == 0.75 and metrics["acc_norm"] == 0.75 and metrics["n"] == 4
    # the unrigged model's scores come from the same code: log-probs are finite and negative
    scores = B.choice_logprobs(tiny_model, tiny_tokenizer, items[0])
    assert len(scores) == 4 and all(s < 0 for s in scores)


def test_choice_logprobs_match_a_manual_forward(tiny_model, tiny_tokenizer):
    item = B.Choice(context="Is 9.11 bigger", choices=[" than 9.9", " no"], gold=0)
    got = B.choice_logprobs(tiny_model, tiny_tokenizer, item)
    for choice, score in zip(item.choices, got):
        ctx = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(item.context, add_special_tokens=False)["input_ids"]
        cont = tiny_tokenizer(choice, add_special_tokens=False)["input_ids"]
        full = torch.tensor([ctx + cont])
        with torch.no_grad():
            logps = torch.log_softmax(tiny_model(input_ids=full).logits[0], -1)
        expected = sum(float(logps[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-4)


def test_run_benchmark_names_metrics(tiny_model, tiny_tokenizer):
    metrics, rows = B.run_benchmark("mmlu", tiny_model, tiny_tokenizer, data_file=str(DATA / "mmlu.parquet"))
    assert set(metrics) == {"eval/mmlu/acc", "eval/mmlu/acc_norm", "eval/mmlu/n"} and rows == []
    assert metrics["eval/mmlu/n"] == 3 and 0 <= metrics["eval/mmlu/acc"] <= 1
