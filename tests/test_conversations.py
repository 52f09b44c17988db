"""Conversation datasets: local jsonl/json/parquet and hub loading; bad rows skipped and reported with file:line."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import UserError
from stages.data.conversations import SkipReport, load_conversations, normalise_row, parse_hub_spec

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}]}
BAD_LINES = [
    {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},   # 2 unknown role
    {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},     # 3 empty content
    {"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]},   # 4 out of order
    {"messages": [{"role": "user", "content": "x"}]},                                           # 5 no assistant
    {"text": "just text"},                                                                      # 6 not a conversation
    {"messages": [{"role": "user", "content": "x<|end|>"}, {"role": "assistant", "content": "y"}]},  # 7 special token
]


def _write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")


def test_local_jsonl_skips_and_reports_each_bad_row(tmp_path):
    path = tmp_path / "chats.jsonl"
    _write_jsonl(path, [GOOD, *BAD_LINES, GOOD], raw_lines=["{not json"])
    report = SkipReport()
    rows = load_conversations(str(path), report)
    assert [where for where, _ in rows] == [f"{path}:1", f"{path}:8"]
    assert rows[0][1] == GOOD["messages"]
    where = {w: kind for w, kind, _ in report.skipped}
    assert where == {f"{path}:2": "unknown role", f"{path}:3": "empty content",
                     f"{path}:4": "roles out of order", f"{path}:5": "no final assistant turn",
                     f"{path}:6": "not a conversation", f"{path}:7": "special tokens in text", f"{path}:9": "bad JSON"}
    assert report.kept == 2 and "skipped 7" in report.summary()
    report.write(tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["counts"]["unknown role"] == 1


def test_sharegpt_and_content_parts():
    row = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    assert normalise_row(row)[0] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": "yo"}]}
    assert normalise_row(parts)[0][0]["content"] == "hi"


def test_parquet_and_json_and_max_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD, GOOD]), tmp_path / "c.parquet")
    report = SkipReport()
    assert len(load_conversations(str(tmp_path / "c.parquet"), report, max_rows=2)) == 2
    (tmp_path / "c.json").write_text(json.dumps([GOOD, BAD_LINES[0]]))
    rows = load_conversations(str(tmp_path / "c.json"), report)
    assert len(rows) == 1 and report.skipped[-1][0] == f"{tmp_path / 'c.json'}:[1]"


def test_hub_datasets_stream_through_datasets(monkeypatch):
    import datasets
    calls = []

    def fake_load(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([GOOD, BAD_LINES[2], GOOD])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    report = SkipReport()
    rows = load_conversations("HuggingFaceH4/ultrachat_200k", report, max_rows=3)
    assert calls == [("HuggingFaceH4/ultrachat_200k", None, "train_sft", True)]
    assert len(rows) == 2 and report.skipped[0][0] == "hub:HuggingFaceH4/ultrachat_200k[train_sft]:1"
    load_conversations("HuggingFaceTB/smoltalk", report, max_rows=1)
    assert calls[-1] == ("HuggingFaceTB/smoltalk", "all", "train", True)
    assert parse_hub_spec("org/data:cfg@test") == ("org/data", "cfg", "test")


def test_unreachable_hub_and_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot load hub dataset 'nobody/nothing'"):
        load_conversations("nobody/nothing", SkipReport())  # HF_DATASETS_OFFLINE=1 in tests
    with pytest.raises(UserError, match="does not exist"):
        load_conversations(str(tmp_path / "missing.jsonl"), SkipReport())
    with pytest.raises(UserError, match="neither"):
        load_conversations("not-a-dataset", SkipReport())


@pytest.mark.parametrize("name, data, message", [
    ("c.jsonl", json.dumps(GOOD).encode() + b"\n" + "{\"caf\u00e9\": 1}".encode("latin-1") + b"\n", r"c.jsonl:2: not UTF-8"),
    ("c.jsonl", b"\x00\x01\x02\x03 binary\n", r"c.jsonl:1: control character 0x00"),
    ("c.json", b'[{"messages": []},\n {oops}]', r"c.json:2: not valid JSON"),
    ("c.parquet", b"not parquet at all", r"c.parquet: not a readable parquet file"),
])
def test_wrong_or_binary_files_are_one_line_errors(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        load_conversations(str(tmp_path / name), SkipReport())
