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
