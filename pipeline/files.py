"""Reading the files people hand us: recipes, data (.txt/.jsonl/.parquet), rollouts, rankings, conversations.

    text = read_text(path, "recipe", max_bytes=MAX_RECIPE_BYTES)      # a whole small file
    for line_no, line in read_lines(path, "rollouts file"): ...       # JSONL, one line at a time
    for line_no, record in read_jsonl(path, "rollout"): ...           # JSONL records (dicts)
    for block in read_blocks(path, "data file"): ...                  # a big .txt, streamed

Bad bytes, a wrong encoding or an absurd size raise UserError naming file:line and what was expected
(the CLI prints it as one line and exits 2), never a UnicodeDecodeError traceback:
    corpus.txt:3: not UTF-8 (byte 0xe9 at column 12); expected UTF-8 text — convert it, e.g. iconv -f latin1 -t utf-8
    corpus.txt:1: control character 0x00 at column 5; expected plain text (is this a binary file?)
Tab, newline, carriage return, vertical tab and form feed are text; the other C0 control characters
(NUL, 0x01-0x08, 0x0e-0x1f) are not. A UTF-8 byte-order mark at the start of a file is dropped.
"""
from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError

MiB = 1 << 20
GiB = 1 << 30
MAX_RECIPE_BYTES = 1 * MiB      # a recipe is a page of YAML; a bigger file is not one
MAX_RECORDS_BYTES = 4 * GiB     # a JSONL file loaded whole into memory (rollouts, rankings)
MAX_LINE_BYTES = 64 * MiB       # one JSON record per line
BLOCK_BYTES = 1 * MiB           # read size when streaming
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
BOM = "\ufeff"
CONVERT_HINT = "convert it, e.g. iconv -f latin1 -t utf-8"


def _size(value: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} bytes"


def check_file(path: str | Path, what: str, max_bytes: int | None = None) -> int:
    """The size of a readable regular file, or UserError: missing, not a file, or over max_bytes."""
    path = Path(path)
    try:
        if not path.exists():
            raise UserError(f"{path}: no such file (expected a {what})")
        if not path.is_file():
            raise UserError(f"{path}: not a regular file (expected a {what})")
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if max_bytes is not None and size > max_bytes:
        raise UserError(f"{path}: {_size(size)} is too large for a {what} (limit {_size(max_bytes)})")
    return size


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _decode_error(path: Path, data: bytes, exc: UnicodeDecodeError, first_line: int,
                  carry: int = 0) -> UserError:
    """`carry`: bytes of the error's line that came before `data` (a streamed line spans blocks)."""
    line = first_line + data.count(b"\n", 0, exc.start)
    newline = data.rfind(b"\n", 0, exc.start)
    column = exc.start - newline + (carry if newline < 0 else 0)
    return UserError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
                     f"expected UTF-8 text — {CONVERT_HINT}")


def check_plain(text: str, path: str | Path, first_line: int = 1, carry: int = 0) -> str:
    """`text` unchanged, or UserError at the first control character that has no place in text.
    `carry`: characters of the first line that came before `text`."""
    bad = CONTROL.search(text)
    if bad is not None:
        line = first_line + text.count("\n", 0, bad.start())
        newline = text.rfind("\n", 0, bad.start())
        column = bad.start() - newline + (carry if newline < 0 else 0)
        raise UserError(f"{path}:{line}: control character 0x{ord(bad.group()):02x} at column {column}; "
                        "expected plain text (is this a binary file?)")
    return text


def decode(data: bytes, path: str | Path, first_line: int = 1) -> str:
    """Strict UTF-8 (a leading byte-order mark dropped) with no stray control characters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _decode_error(Path(path), data, exc, first_line) from None
    return check_plain(text[1:] if first_line == 1 and text.startswith(BOM) else text, path, first_line)


def read_text(path: str | Path, what: str, max_bytes: int) -> str:
    """A whole file as checked text (recipes, small JSON files)."""
    path = Path(path)
    check_file(path, what, max_bytes)
    with _open(path) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we looked
        raise UserError(f"{path}: too large for a {what} (limit {_size(max_bytes)})")
    return decode(data, path)


def read_lines(path: str | Path, what: str, max_line_bytes: int = MAX_LINE_BYTES,
               max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a text file, each line checked as it is read.

    A file over max_bytes is refused before reading; a line over max_line_bytes stops the read there."""
    path = Path(path)
    check_file(path, what, max_bytes)
    with _open(path) as fh:
        line_no = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > max_line_bytes:
                raise UserError(f"{path}:{line_no}: line longer than {_size(max_line_bytes)}; "
                                f"expected one record per line in a {what}")
            yield line_no, decode(raw, path, line_no).rstrip("\r\n")


def read_blocks(path: str | Path, what: str, max_bytes: int | None = None,
                block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """A text file as checked blocks of text, streamed (any size); at most max_bytes are read (a character
    cut by that limit is dropped, not an error)."""
    path = Path(path)
    check_file(path, what)
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    line, byte_carry, char_carry, total = 1, 0, 0, 0
    with _open(path) as fh:
        while max_bytes is None or total < max_bytes:
            data = fh.read(block_bytes if max_bytes is None else min(block_bytes, max_bytes - total))
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, exc.object, exc, line, byte_carry - pending) from None
            if total == 0 and text.startswith(BOM):
                text = text[1:]
            yield check_plain(text, path, line, char_carry)
            if not data:
                return
            total += len(data)
            line += text.count("\n")
            newline_bytes, newline_chars = data.rfind(b"\n"), text.rfind("\n")
            byte_carry = len(data) - newline_bytes - 1 if newline_bytes >= 0 else byte_carry + len(data)
            char_carry = len(text) - newline_chars - 1 if newline_chars >= 0 else char_carry + len(text)


def _ends_with_newline(path: Path) -> bool:
    with _open(path) as fh:
        if fh.seek(0, 2) == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def read_jsonl(path: str | Path, what: str, max_bytes: int = MAX_RECORDS_BYTES) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSONL file of objects (rollouts, rankings), blank lines skipped.

    A partial last line (a writer killed mid-line: no newline after it) is left out; any other line
    that is not a JSON object is a UserError naming file:line."""
    path = Path(path)
    broken: UserError | None = None
    for line_no, line in read_lines(path, f"{what} file", max_bytes=max_bytes):
        if broken is not None:
            raise broken
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            broken = UserError(f"{path}:{line_no}: not valid JSON; expected one {what} record (an object) per line")
            continue
        if not isinstance(record, dict):
            raise UserError(f"{path}:{line_no}: a JSON {type(record).__name__}; expected a {what} record (an object)")
        yield line_no, record
    if broken is not None and _ends_with_newline(path):
        raise broken


def write_jsonl(path: str | Path, records) -> None:
    """One JSON object per line; written beside the target and moved in place, so a reader never sees half."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    part.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
    os.replace(part, path)
