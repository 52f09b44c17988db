"""Tokenizer: byte-level round trip on arbitrary unicode and bytes (hypothesis), special tokens only where
asked for, digits split, the stage's compression report and the `lifecycle tokenize` view."""
from __future__ import annotations

import json
from itertools import islice

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.context import StageContext
from pipeline.schema import Recipe
from pipeline.tracking import Tracker
from stages.data.sources import embedded_documents
from stages.data.special_tokens import BOS, END, SPECIAL_TOKENS
from stages.lm.bpe import encode_plain, render_tokens
from stages.tokenizer import run


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tiny_tokenizer, text):
    ids = encode_plain(tiny_tokenizer, [text])[0]
    assert tiny_tokenizer.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_round_trip_arbitrary_bytes(tiny_tokenizer, data):
    # every byte value is a base symbol: bytes read as latin-1 (code points 0-255) come back unchanged
    text = data.decode("latin-1")
    assert tiny_tokenizer.decode(encode_plain(tiny_tokenizer, [text])[0]) == text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(SPECIAL_TOKENS + ["a", " ", "é", "1"]), max_size=12))
def test_plain_text_never_yields_special_tokens(tiny_tokenizer, pieces):
    text = "".join(pieces)
    ids = encode_plain(tiny_tokenizer, [text])[0]
    assert not set(ids) & set(tiny_tokenizer.all_special_ids)
    assert tiny_tokenizer.decode(ids) == text


def test_special_tokens_at_the_end_and_chat_markers_recognised(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    n = len(tiny_tokenizer)
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(n - len(SPECIAL_TOKENS), n))
    assert tiny_tokenizer.bos_token == BOS and tiny_tokenizer.eos_token == END
    # rendering a conversation (chat template path) does use the special ids
    ids = tiny_tokenizer(f"{BOS}hi{END}", add_special_tokens=False)["input_ids"]
    assert ids[0] == vocab[BOS] and ids[-1] == vocab[END]


def test_digits_are_single_tokens(tiny_tokenizer):
    pieces = render_tokens(tiny_tokenizer, "x 12345 y").split("|")
    assert [p for p in pieces if p.strip("·").isdigit()] == list("12345")


def test_stage_reports_compression_and_saves_a_transformers_dir(tmp_path):
    from transformers import AutoTokenizer

    recipe = Recipe(name="t", data={"max_documents": 80, "val_fraction": 0.1}, tokenizer={"vocab_size": 400})
    tracker = Tracker("tokenizer", tmp_path, tmp_path, "t", {}, None, echo=False)
    ctx = StageContext(stage="tokenizer", out_dir=tmp_path, run_dir=tmp_path, seed=0, tracker=tracker)
    metrics = run(recipe, {}, ctx)
    assert 2.0 < metrics["eval/bytes_per_token"] < 6.0 and metrics["vocab_size"] == 400
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.decode(tok("In the beginning")["input_ids"], skip_special_tokens=True) == "In the beginning"
    assert tok.chat_template
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["eval/bytes_per_token"] > 2


def test_stage_on_a_single_small_txt_file_at_the_default_val_fraction(tmp_path):

    from pipeline.context import StageContext
    from stages.tokenizer import run
    book = tmp_path / "input.txt"
    book.write_text("\n".join(islice(embedded_documents(), 12)))  # one ~40 KB file: one document
    recipe = Recipe(name="t", data={"source": "local", "paths": [str(book)]}, tokenizer={"vocab_size": 400})
    assert recipe.data.val_fraction == 0.02
    out = tmp_path / "tok"
    ctx = StageContext(stage="tokenizer", out_dir=out, run_dir=tmp_path, seed=0,
                       tracker=Tracker("tokenizer", out, tmp_path, "t", {}, None, echo=False))
    metrics = run(recipe, {}, ctx)
    assert 1.2 < metrics["eval/bytes_per_token"] < 6.0  # merges compress the held-out tail (vocab 400)
    assert "held-out compression" in (out / "log.txt").read_text()


def test_tokenize_cli_shows_pieces_and_ids(tmp_path, tiny_tokenizer, capsys):
    import argparse

    import pytest

    from pipeline.commands.tokenize import main as tokenize_cli
    from pipeline.errors import UserError
    tiny_tokenizer.save_pretrained(tmp_path)
    tokenize_cli(argparse.Namespace(text="Hello  world 12", tokenizer=str(tmp_path)))
    out = capsys.readouterr().out
    assert out.startswith(f"{len(encode_plain(tiny_tokenizer, ['Hello  world 12'])[0])} tokens, 15 bytes")
    assert "·" in out and "|1|2" in out
    with pytest.raises(UserError, match="no tokenizer dir"):
        tokenize_cli(argparse.Namespace(text="x", tokenizer=str(tmp_path / "missing")))
