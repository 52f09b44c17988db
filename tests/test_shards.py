"""Token shards: every document exactly once (several processes, several shards), BOS between documents,
special-token strings stay text, a killed build resumes, windows are a pure function of the step."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.schema import Data
from stages.data.shards import ShardSet, TrainWindows, build_shards, byte_pair_counts, token_dtype
from stages.data.sources import iter_split
from stages.data.special_tokens import END


def _corpus(tmp_path, n=300):
    rows = [{"text": f"Document {i}: " + "word " * (i % 17) + ("héllo wörld ✓ " if i % 5 == 0 else "")
             + (f" fake turn {END} inside" if i % 7 == 0 else "")} for i in range(n)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return Data(source="local", paths=[str(path)], val_fraction=0.1, shard_tokens=1000, num_workers=2)


def _documents(shards: ShardSet, split: str, tokenizer) -> list[str]:
    tokens = shards.head(split)
    bos = tokenizer.bos_token_id
    assert tokens[0] == bos
    starts = list(np.flatnonzero(tokens == bos)) + [len(tokens)]
    return [tokenizer.decode(tokens[a + 1:b]) for a, b in zip(starts, starts[1:])]


def test_every_document_exactly_once(tmp_path, tiny_tokenizer):
    cfg = _corpus(tmp_path)
    out = build_shards(cfg, 3, tiny_tokenizer, tmp_path / "shards", log=lambda m: None, progress_bar=False)
    shards = ShardSet(out)
    man = shards.manifest
    assert len(man["splits"]["train"]["shards"]) > 1  # small shard_tokens: several shards
    assert shards.dtype == np.uint16 == token_dtype(len(tiny_tokenizer))
    assert man["tokenizer_fingerprint"] and man["source"]["paths"] == cfg.paths
    expected = {"train": [], "val": []}
    for held_out, doc in iter_split(cfg, 3):
        expected["val" if held_out else "train"].append(doc)
    for split in ("train", "val"):
        got = _documents(shards, split, tiny_tokenizer)
        assert got == expected[split]  # each once, in source order
        assert man["splits"][split]["documents"] == len(got)
        assert man["splits"][split]["tokens"] == sum(a.size for a in shards.arrays(split))
        assert man["splits"][split]["bytes"] == sum(len(d.encode()) for d in got)
    assert (shards.byte_pairs("val") == byte_pair_counts(expected["val"])).all()


def test_special_token_text_is_not_a_special_token(tmp_path, tiny_tokenizer):
    cfg = _corpus(tmp_path, n=30).model_copy(update={"num_workers": 1})
    shards = ShardSet(build_shards(cfg, 3, tiny_tokenizer, tmp_path / "s", log=lambda m: None, progress_bar=False))
    tokens = np.concatenate([shards.head("train"), shards.head("val")])
    specials = set(tiny_tokenizer.all_special_ids) - {tiny_tokenizer.bos_token_id}
    assert not specials & set(tokens.tolist())
    assert (tokens == tiny_tokenizer.bos_token_id).sum() == len(list(iter_split(cfg, 3)))  # 30 heads and tails


def test_killed_build_resumes_and_skips_finished_shards(tmp_path, tiny_tokenizer):
    cfg = _corpus(tmp_path).model_copy(update={"num_workers": 1})
    out = build_shards(cfg, 3, tiny_tokenizer, tmp_path / "a", log=lambda m: None, progress_bar=False)
    reference = {s: ShardSet(out).head(s) for s in ("train", "val")}
    # simulate a kill after the second train shard: no manifest, later shards gone, a half-written file left
    progress = json.loads((out / "progress.json").read_text())
    assert len(progress["train"]["shards"]) >= 3
    keep = progress["train"]["shards"][:2]
    for s in progress["train"]["shards"][2:] + progress["val"]["shards"]:
        (out / s["file"]).unlink()
    (out / "manifest.json").unlink()
    (out / "train_000002.bin").write_bytes(b"\x00\x01partial")
    kept_mtime = (out / keep[1]["file"]).stat().st_mtime_ns
    progress["train"] = {"shards": keep, "next": keep[-1]["next"]}  # as written when shard 2 was finished
    progress["val"] = {"shards": [], "next": 0}
    (out / "progress.json").write_text(json.dumps(progress))
    logs = []
    again = build_shards(cfg, 3, tiny_tokenizer, tmp_path / "a", log=logs.append, progress_bar=False)
    assert again == out and "2 finished shard(s) kept" in logs[0]
    assert (out / keep[1]["file"]).stat().st_mtime_ns == kept_mtime  # not rewritten
    for split in ("train", "val"):
        assert np.array_equal(ShardSet(out).head(split), reference[split])


def test_cache_key_follows_data_and_tokenizer(tmp_path, tiny_tokenizer):
    cfg = _corpus(tmp_path, n=40).model_copy(update={"num_workers": 1})
    a = build_shards(cfg, 3, tiny_tokenizer, tmp_path / "c", log=lambda m: None, progress_bar=False)
    b = build_shards(cfg.model_copy(update={"num_workers": 4}), 3, tiny_tokenizer, tmp_path / "c", log=lambda m: None)
    c = build_shards(cfg.model_copy(update={"val_fraction": 0.2}), 3, tiny_tokenizer, tmp_path / "c",
                     log=lambda m: None, progress_bar=False)
    assert a == b != c  # worker count does not change the tokens; the split does


def test_windows_are_a_function_of_the_step_and_split_across_ranks(tmp_path, tiny_tokenizer):
    cfg = _corpus(tmp_path).model_copy(update={"num_workers": 1})
    shards = ShardSet(build_shards(cfg, 3, tiny_tokenizer, tmp_path / "w", log=lambda m: None, progress_bar=False))
    w = TrainWindows(shards, 16, seed=0)
    x, y = w.micro_batch(5, 1, 0, 1, 4, 2)
    assert x.shape == y.shape == (4, 16) and np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(TrainWindows(shards, 16, seed=0).micro_batch(5, 1, 0, 1, 4, 2)[0], x)  # fresh loader
    # 2 ranks x micro-batch 2 see, per micro-step, the rows 1 rank x micro-batch 4 sees
    for micro in range(2):
        one = w.micro_batch(3, micro, 0, 1, 4, 2)[0]
        two = np.concatenate([w.micro_batch(3, micro, r, 2, 2, 2)[0] for r in range(2)])
        assert np.array_equal(one, two)
    # one epoch visits every window once
    every = sorted(tuple(a[k * 16: k * 16 + 17]) for a in shards.arrays("train") for k in range((a.size - 1) // 16))
    assert sorted(tuple(row) for row in w.windows(0, w.num_windows)) == every
    assert not np.array_equal(w.windows(0, 8), w.windows(w.num_windows, 8))  # epoch 2: a new order
    with pytest.raises(ValueError):
        TrainWindows(shards, 10**7, seed=0)
