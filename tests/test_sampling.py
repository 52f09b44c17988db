"""Sampling from an HF model dir (seeded = reproducible, unseeded = stochastic) and the regurgitation
probe (a model overfit on two documents continues them verbatim, not held-out ones)."""
from __future__ import annotations

import argparse

import pytest
import torch

from pipeline.commands.sample import main as sample_cli
from stages.eval.probes import regurgitation
from stages.lm.sampling import sample

TRAIN = ["And God said, Let there be light: and there was light. And God saw the light, that it was good.",
         "The quick brown fox jumps over the lazy dog; strawberry has three r letters in it, count them."]
HELD_OUT = ["Is 9.11 bigger than 9.9? No: 9.90 > 9.11. Numbers 0 1 2 3 4 5 6 7 8 9 are digits here.",
            "In the beginning God created the heaven and the earth, and the earth was without form."]


@pytest.fixture()
def model_dir(tmp_path, tiny_model, tiny_tokenizer):
    from stages.lm.model import save_model
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    return tmp_path / "m"


def test_seeded_samples_repeat_and_unseeded_vary(model_dir, capsys):
    args = dict(checkpoint=str(model_dir), prompt="And God", n=2, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=24)
    sample_cli(argparse.Namespace(**args, seed=3))
    first = capsys.readouterr().out
    sample_cli(argparse.Namespace(**args, seed=3))
    assert capsys.readouterr().out == first
    assert first.count("--- sample") == 2 and first.count("And God") >= 2
    outs = set()
    for _ in range(3):
        sample_cli(argparse.Namespace(**args, seed=None))
        outs.add(capsys.readouterr().out)
    assert len(outs) > 1


def test_greedy_and_filters(model_dir):
    from stages.lm.model import load_causal_lm
    model, tok = load_causal_lm(model_dir)
    greedy = sample(model, tok, "The", n=2, temperature=0, max_new_tokens=10)
    assert greedy[0] == greedy[1]
    assert len(sample(model, tok, "The", n=3, temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=5, seed=1)) == 3


def test_bad_checkpoint_is_a_user_error(tmp_path):
    from pipeline.errors import UserError
    with pytest.raises(UserError, match="not an HF model dir"):
        sample_cli(argparse.Namespace(checkpoint=str(tmp_path), prompt="x", n=1, temperature=1.0, top_k=0,
                                      top_p=1.0, max_new_tokens=4, seed=0))


def test_regurgitation_separates_memorised_from_held_out(tiny_model, tiny_tokenizer):
    from stages.lm.bpe import encode_plain
    bos = tiny_tokenizer.bos_token_id
    rows = [[bos] + ids[:24] for ids in encode_plain(tiny_tokenizer, TRAIN)]
    batch = torch.tensor(rows)  # (2, 25)
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):  # memorise the two training documents
        loss = tiny_model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    tiny_model.eval()
    out = regurgitation(tiny_model, tiny_tokenizer, TRAIN, HELD_OUT, prefix_tokens=8, continue_tokens=12)
    assert out["probe/train_verbatim"] == 1.0 and out["probe/val_verbatim"] == 0.0
    assert out["probe/train_match_tokens"] == 12 and out["probe/train_documents"] == 2
