"""Conversation datasets in the messages format ([{"role", "content"}, ...]) from the hub or local files.

    from stages.data.conversations import SkipReport, load_conversations
    report = SkipReport()
    rows = load_conversations("HuggingFaceH4/ultrachat_200k", report, max_rows=20000)   # [(where, messages)]
    rows = load_conversations("data/chats.jsonl", report)
    print(report.summary())          # "kept 19873, skipped 127: roles out of order 90, empty content 37"

Sources (the `sft.datasets` entries other than "builtin"):
- a hub id, optionally `id:config@split`; known defaults: HuggingFaceTB/smoltalk (config "all", split
  "train"), HuggingFaceH4/ultrachat_200k (split "train_sft"). Streamed, so only max_rows rows are read.
- a local .jsonl / .json / .parquet file with a `messages` column (or ShareGPT `conversations` with
  from/value keys: human -> user, gpt -> assistant; or Alpaca `instruction`, optional `input`, `output`:
  one user turn, the instruction and then the input after a blank line, and the output as the answer).
Each row is checked (stages/data/chat.py check_roles, plus: our special tokens inside text, a trailing
turn that is not the assistant's); bad rows are skipped and recorded with their file:line (or
hub:id[split]:row), never raised. The SFT stage adds over-long rows to the same report.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Iterator

import datasets

from pipeline.errors import UserError
from pipeline.files import GiB, check_file, read_lines, read_text
from stages.data.chat import check_roles
from stages.data.special_tokens import SPECIAL_TOKENS

HUB_DEFAULTS = {"HuggingFaceTB/smoltalk": ("all", "train"), "HuggingFaceH4/ultrachat_200k": (None, "train_sft")}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant"}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_JSON_BYTES = 1 * GiB  # a .json file is parsed whole; .jsonl and .parquet are streamed


class SkipReport:
    """Rows kept, and every skipped row with where it was and why."""

    def __init__(self):
        self.kept = 0
        self.skipped: list[tuple[str, str, str]] = []   # (where, kind, detail)

    def skip(self, where: str, reason: str) -> None:
        kind, _, detail = reason.partition(":")
        self.skipped.append((where, kind.strip(), detail.strip()))

    def counts(self) -> dict[str, int]:
        return dict(Counter(kind for _, kind, _ in self.skipped).most_common())

    def summary(self) -> str:
        parts = ", ".join(f"{kind} {n}" for kind, n in self.counts().items())
        return f"kept {self.kept}, skipped {len(self.skipped)}" + (f": {parts}" if parts else "")

    def write(self, path: str | Path, limit: int = 1000) -> None:
        rows = [{"where": w, "kind": k, "detail": d} for w, k, d in self.skipped[:limit]]
        Path(path).write_text(json.dumps({"kept": self.kept, "skipped": len(self.skipped), "counts": self.counts(),
                                          "first_skipped": rows}, indent=2))


def _text(content) -> str | None:
    """Plain text of a message's content: a string, or OpenAI-style parts [{"type": "text", "text": ...}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(p.get("text", "") for p in content if p.get("type", "text") == "text")
    return None


def _alpaca(row: dict) -> list[dict] | None:
    """An Alpaca row (instruction, optional input, output) as a user turn and an assistant turn."""
    instruction, extra, output = row.get("instruction"), row.get("input") or "", row.get("output")
    if not isinstance(instruction, str) or not isinstance(extra, str) or not isinstance(output, str):
        return None
    user = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def normalise_row(row) -> tuple[list[dict] | None, str | None]:
    """(messages, None) for a usable row, else (None, reason)."""
    if not isinstance(row, dict):
        return None, f"not a conversation: a {type(row).__name__}, expected an object"
    turns = row.get("messages")
    if turns is None and row.get("conversations") is None and "instruction" in row:
        turns = _alpaca(row)
    sharegpt = turns is None and row.get("conversations") is not None
    turns = row.get("conversations") if sharegpt else turns
    if not isinstance(turns, list):
        return None, "not a conversation: no 'messages' (or 'conversations', or Alpaca 'instruction'/'output')"
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None, "not a conversation: a turn is not an object"
        role = SHAREGPT_ROLES.get(turn.get("from"), turn.get("from")) if sharegpt else turn.get("role")
        content = _text(turn.get("value") if sharegpt else turn.get("content"))
        messages.append({"role": role, "content": content})
    problem = check_roles(messages)
    if problem:
        return None, problem
    if messages[-1]["role"] != "assistant":
        return None, "no final assistant turn: the last turn is the user's"
    leaked = sorted({tok for m in messages for tok in SPECIAL_TOKENS if tok in m["content"]})
    if leaked:
        return None, f"special tokens in text: {', '.join(leaked)}"
    return messages, None


def _local_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) of a local file. Bad bytes or encoding (a wrong or binary file) raise; a row that is
    not JSON comes back as a ValueError, to be skipped and reported like any other bad row."""
    if path.suffix == ".jsonl":
        for line_no, line in read_lines(path, "conversation dataset"):
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{path}:{line_no}", ValueError(f"bad JSON: {exc.msg} at column {exc.colno}")
            except RecursionError:
                yield f"{path}:{line_no}", ValueError("bad JSON: nested too deeply")
    elif path.suffix == ".json":
        yield from _json_rows(path)
    else:
        yield from _parquet_rows(path)


def _json_rows(path: Path) -> Iterator[tuple[str, object]]:
    text = read_text(path, "conversation dataset (.json; use .jsonl for bigger ones)", MAX_JSON_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); expected a list of conversations") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply; expected a list of conversations") from None
    if not isinstance(data, list):
        raise UserError(f"sft.datasets: {path} holds a JSON {type(data).__name__}; expected a list of conversations")
    yield from ((f"{path}:[{i}]", row) for i, row in enumerate(data))


def _parquet_rows(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    check_file(path, "conversation dataset")
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}:row {i}", row
                i += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: not a readable parquet file ({first}); expected a 'messages' column") from None


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """'id[:config][@split]' -> (id, config, split), with the known datasets' defaults."""
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    default_config, default_split = HUB_DEFAULTS.get(name, (None, "train"))
    return name, config or default_config, split or default_split


def _hub_rows(spec: str) -> Iterator[tuple[str, object]]:
    name, config, split = parse_hub_spec(spec)
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # offline, unknown id, bad config: all the user's to fix
        raise UserError(f"sft.datasets: cannot load hub dataset '{name}' (config {config}, split {split}): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; expected a reachable "
                        f"hub id or a local .jsonl/.json/.parquet path") from None
    yield from ((f"hub:{name}[{split}]:{i}", row) for i, row in enumerate(stream))


def load_conversations(spec: str, report: SkipReport, max_rows: int | None = None) -> list[tuple[str, list[dict]]]:
    """[(where, messages)] of the usable rows among the first max_rows of a hub dataset or local file."""
    path = Path(spec).expanduser()
    if path.suffix in LOCAL_SUFFIXES:
        if not path.is_file():
            raise UserError(f"sft.datasets: {spec} does not exist (expected a .jsonl/.json/.parquet file or a hub id)")
        rows = _local_rows(path)
    elif path.exists() or spec.count("/") != 1:
        raise UserError(f"sft.datasets: '{spec}' is neither a .jsonl/.json/.parquet file nor a hub id (owner/name)")
    else:
        rows = _hub_rows(spec)
    out = []
    for where, row in itertools.islice(rows, max_rows):
        messages, problem = (None, str(row)) if isinstance(row, ValueError) else normalise_row(row)
        if problem:
            report.skip(where, problem)
            continue
        out.append((where, messages))
    report.kept += len(out)
    return out
