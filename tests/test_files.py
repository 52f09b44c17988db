"""pipeline/files.py: bad bytes, wrong encodings and absurd sizes are one UserError naming file:line."""
from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.files import read_blocks, read_lines, read_text


def test_read_text_drops_a_bom_and_keeps_tabs_and_newlines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffname: t\r\n\tx\f\n".encode())
    assert read_text(path, "recipe", 1000) == "name: t\r\n\tx\f\n"


@pytest.mark.parametrize("data, message", [
    (b"ok\nnot \xe9 utf8\n", r"a.txt:2: not UTF-8 \(byte 0xe9 at column 5\); expected UTF-8 text"),
    (b"ok\nok\nab\x00\x01\x02\n", r"a.txt:3: control character 0x00 at column 3; expected plain text"),
    (b"\xff\xfen\x00a\x00m\x00e\x00", r"a.txt:1: not UTF-8 \(byte 0xff at column 1\)"),  # UTF-16
    (b"x" * 101, r"a.txt: 101 bytes is too large for a recipe \(limit 100 bytes\)"),
])
def test_read_text_errors(tmp_path, data, message):
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    with pytest.raises(UserError, match=message):
        read_text(path, "recipe", 100)


def test_missing_and_directory_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_text(tmp_path / "nope.yaml", "recipe", 100)
    with pytest.raises(UserError, match="not a regular file"):
        list(read_lines(tmp_path, "rollouts file"))


def test_read_lines_numbers_lines_and_limits_their_length(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\n{"b": 2}')
    assert list(read_lines(path, "rollouts file")) == [(1, '{"a": 1}'), (2, ""), (3, '{"b": 2}')]
    path.write_bytes(b"short\n" + b"x" * 50 + b"\n")
    with pytest.raises(UserError, match=r"r.jsonl:2: line longer than 40 bytes"):
        list(read_lines(path, "rollouts file", max_line_bytes=40))
    path.write_bytes(b"one\ntwo \xc3\x28\n")
    with pytest.raises(UserError, match=r"r.jsonl:2: not UTF-8 \(byte 0xc3 at column 5\)"):
        list(read_lines(path, "rollouts file"))


def test_read_blocks_streams_across_block_edges(tmp_path):
    text = "héllo wörld ✓\n" * 50
    path = tmp_path / "big.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert "".join(read_blocks(path, "data file", block_bytes=7)) == text  # multi-byte characters cut by blocks
    assert "".join(read_blocks(path, "data file", max_bytes=21, block_bytes=7)) == text[:14]


def test_read_blocks_reports_the_line_and_column_of_a_late_error(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"abc\n" * 10 + b"defg" * 3 + b"\x01")
    with pytest.raises(UserError, match=r"big.txt:11: control character 0x01 at column 13"):
        list(read_blocks(path, "data file", block_bytes=5))
    path.write_bytes(b"abc\n" * 10 + b"defg" * 3 + b"\x80")
    with pytest.raises(UserError, match=r"big.txt:11: not UTF-8 \(byte 0x80 at column 13\)"):
        list(read_blocks(path, "data file", block_bytes=5))
    path.write_bytes(b"abc\n\xe2\x9c")  # a character cut by the end of the file
    with pytest.raises(UserError, match=r"big.txt:2: not UTF-8 \(byte 0xe2 at column 1\)"):
        list(read_blocks(path, "data file", block_bytes=5))
