"""Data sources: local .txt/.jsonl/.parquet and globs, the embedded corpus, the deterministic split, and a
hub source failing fast and clearly offline."""
from __future__ import annotations

import json
import time

import pytest

from pipeline.errors import UserError
from pipeline.schema import Data
from stages.data import sources
from stages.data.sources import iter_documents, iter_split, split_documents


def test_local_txt_jsonl_parquet_and_globs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "a.txt").write_text("first text file")
    (tmp_path / "b.txt").write_text("second text file")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "json one"}) + "\n\n" + json.dumps({"body": "json two"}) + "\n")
    pq.write_table(pa.table({"body": ["parquet one", "", "parquet two"]}), tmp_path / "d.parquet")
    cfg = Data(source="local", paths=[str(tmp_path / "*.txt"), str(tmp_path / "c.jsonl"), str(tmp_path / "d.parquet"),
                                      str(tmp_path / "a.txt")], text_field="body")
    assert list(iter_documents(cfg)) == ["first text file", "second text file", "json one", "json two",
                                         "parquet one", "parquet two"]  # a.txt once; empty rows dropped
    assert list(iter_documents(cfg.model_copy(update={"max_documents": 2}))) == ["first text file", "second text file"]


def test_long_txt_is_cut_at_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "TXT_DOC_CHARS", 50)
    text = "\n\n".join(f"Paragraph {i} " + "x" * 30 for i in range(6))
    (tmp_path / "book.txt").write_text(text)
    docs = list(iter_documents(Data(source="local", paths=[str(tmp_path / "book.txt")])))
    assert len(docs) == 3 and "\n\n".join(docs) == text


@pytest.mark.parametrize("paths, field, message", [
    ([], "text", "data.paths: empty"),
    (["{d}/nothing*.txt"], "text", "matches no file"),
    (["{d}/x.csv"], "text", "not .txt, .jsonl or .parquet"),
    (["{d}/c.jsonl"], "content", "no 'content' field"),
    (["{d}/bad.jsonl"], "text", "bad.jsonl:2: not valid JSON"),
])
def test_local_errors_name_the_problem(tmp_path, paths, field, message):
    (tmp_path / "x.csv").write_text("a,b")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "hi"}) + "\n{oops\n")
    cfg = Data(source="local", paths=[p.format(d=tmp_path) for p in paths], text_field=field)
    with pytest.raises(UserError, match=message):
        list(iter_documents(cfg))


@pytest.mark.parametrize("source, dataset", [("fineweb", "HuggingFaceFW/fineweb-edu"), ("hub", "roneneldan/TinyStories")])
def test_hub_source_offline_fails_fast_and_suggests_local(monkeypatch, source, dataset):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(UserError) as err:
        next(iter_documents(Data(source=source, dataset=None if source == "fineweb" else dataset)))
    assert time.time() - start < 5
    assert dataset in str(err.value) and "data.source=local" in str(err.value)


def test_unreachable_hub_sets_offline_flags(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(UserError, match="HuggingFaceFW/fineweb-edu"):
        next(iter_documents(Data(source="fineweb")))
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_hub_source_needs_a_dataset():
    with pytest.raises(UserError, match="data.dataset: required"):
        next(iter_documents(Data(source="hub")))


def test_embedded_corpus_is_real_prose_over_3mb():
    docs = list(iter_documents(Data()))
    assert len(docs) == 1189  # KJV chapters
    assert sum(len(d.encode()) for d in docs) > 3_000_000
    assert docs[0].startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")


def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    rows = [json.dumps({"text": f"doc {i}"}) for i in range(400)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows))
    cfg = Data(source="local", paths=[str(tmp_path / "d.jsonl")], val_fraction=0.1)
    train, val = split_documents(cfg, 1)
    assert (train, val) == split_documents(cfg, 1)
    assert not set(train) & set(val) and len(train) + len(val) == 400
    assert 20 <= len(val) <= 60
    assert split_documents(cfg, 2)[1] != val
    # the split of a document does not depend on what else is in the corpus
    fewer = cfg.model_copy(update={"max_documents": 200})
    assert {d for held, d in iter_split(fewer, 1) if held} == {d for d in val if int(d.split()[1]) < 200}


def test_split_with_no_val_documents_is_an_error(tmp_path):
    (tmp_path / "one.txt").write_text("a single document")
    with pytest.raises(UserError, match="empty"):
        split_documents(Data(source="local", paths=[str(tmp_path / "one.txt")]), 0)


def test_hub_source_streams_the_text_field(monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "one", "id": 1}, {"text": "", "id": 2}, {"text": "two", "id": 3}])

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(iter_documents(Data(source="fineweb"))) == ["one", "two"]
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    with pytest.raises(UserError, match="'body' is not a column of org/ds; columns: id, text"):
        list(iter_documents(Data(source="hub", dataset="org/ds", text_field="body")))


def _play(lines: int = 400) -> str:
    return "".join(f"ACT {i // 50}. Line {i}: Enter the king, and speaks of {i * 7 % 13} ships.\n" for i in range(lines))


def test_a_single_file_is_split_by_position_at_the_default_fraction(tmp_path):
    text = _play()
    (tmp_path / "input.txt").write_text(text)
    cfg = Data(source="local", paths=[str(tmp_path / "input.txt")])  # default val_fraction 0.02
    parts = list(iter_split(cfg, 0))
    assert [held for held, _ in parts] == [False, True]
    assert parts[0][1] + parts[1][1] == text and parts[1][1].startswith("ACT ")  # the tail starts on a line
    share = len(parts[1][1]) / len(text)
    assert 0.018 <= share <= 0.022
    assert list(iter_split(cfg, 0)) == parts == list(iter_split(cfg, 5))  # deterministic, seed-free
    assert split_documents(cfg, 0) == ([parts[0][1]], [parts[1][1]])


def test_hash_split_from_min_val_documents_expected_held_out(tmp_path):
    rows = [json.dumps({"text": f"doc {i} " + "word " * 20}) for i in range(100)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows))
    cfg = Data(source="local", paths=[str(tmp_path / "d.jsonl")], val_fraction=0.1)  # lookahead 10 / 0.1 = 100
    assert sources.lookahead(0.1) == 100
    by_hash = list(iter_split(cfg, 1))
    assert [d for _, d in by_hash] == list(iter_documents(cfg))  # whole documents
    assert by_hash == [(sources.is_val(d, 1, 0.1), d) for _, d in by_hash]
    fewer = list(iter_split(cfg.model_copy(update={"max_documents": 99}), 1))
    assert len(fewer) == 2 * 99 and [held for held, _ in fewer[:2]] == [False, True]  # each one's head and tail


def test_embedded_split_is_unchanged_by_the_position_split():
    cfg = Data(val_fraction=0.02)  # recipes/tiny.yaml: 1,189 chapters, lookahead 500
    split = list(iter_split(cfg, 1337))
    assert split == [(sources.is_val(d, 1337, 0.02), d) for d in iter_documents(cfg)]
    assert sum(held for held, _ in split) == 21


def test_txt_documents_are_streamed_and_cut_without_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "TXT_DOC_CHARS", 100)
    monkeypatch.setattr(sources, "TXT_MAX_DOC_CHARS", 250)
    (tmp_path / "lines.txt").write_text("".join(f"line {i:03d} of a long poem\n" for i in range(40)))
    docs = list(iter_documents(Data(source="local", paths=[str(tmp_path / "lines.txt")])))
    assert all(len(d) <= 250 and d.endswith("\n") for d in docs[:-1]) and "".join(docs) == (tmp_path / "lines.txt").read_text()
    (tmp_path / "one.txt").write_text("x" * 600)  # no line break at all: cut at the limit
    assert [len(d) for d in iter_documents(Data(source="local", paths=[str(tmp_path / "one.txt")]))] == [250, 250, 100]


@pytest.mark.parametrize("name, data, message", [
    ("a.txt", "Le café\n".encode("latin-1"), r"a.txt:1: not UTF-8 \(byte 0xe9 at column 7\)"),
    ("a.txt", b"text\n\x00\x01\x02binary", r"a.txt:2: control character 0x00 at column 1"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"a.jsonl:2: not UTF-8"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": 5}\n', r"a.jsonl:2: 'text' is int; expected a string"),
    ("a.jsonl", b'{"text": "ok"}\n[1, 2]\n', r"a.jsonl:2: no 'text' field"),
    ("a.jsonl", b"[" * 100_000 + b"\n", r"a.jsonl:1: not valid JSON"),
    ("a.parquet", b"PAR1 not really parquet", r"a.parquet: not a readable parquet file"),
])
def test_bad_local_files_are_one_line_errors(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        list(iter_documents(Data(source="local", paths=[str(tmp_path / name)])))


def test_parquet_text_column_must_hold_strings(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "n.parquet")
    with pytest.raises(UserError, match=r"n.parquet: column 'text' holds int64; expected strings"):
        list(iter_documents(Data(source="local", paths=[str(tmp_path / "n.parquet")])))


def test_preflight_reads_small_data_whole_and_big_data_by_its_head(tmp_path, monkeypatch):
    from pipeline.schema import Recipe
    path = tmp_path / "book.txt"
    path.write_text("a single document")
    recipe = Recipe(name="t", data={"source": "local", "paths": [str(path)]})
    with pytest.raises(UserError, match="empty validation split"):  # small: read whole and split
        sources.preflight(recipe)
    path.write_bytes(_play().encode() + b"\xff")
    monkeypatch.setattr(sources, "PREFLIGHT_BYTES", 1000)
    sources.preflight(recipe)  # big: the head reads fine; the bad byte at the end is the stage's to find
    with pytest.raises(UserError, match=r"book.txt:401: not UTF-8"):
        list(iter_documents(recipe.data))
    path.write_bytes(b"\x00" + _play().encode())
    with pytest.raises(UserError, match=r"book.txt:1: control character 0x00"):
        sources.preflight(recipe)
