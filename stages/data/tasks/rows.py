"""Rows of a question-answer source (local file or hub dataset) -> the Tasks of one split, cached per process.

    from stages.data.tasks.rows import pool
    pool(parse_source("gsm8k:openai/gsm8k"), "test")     # every test Task, in file order

Splits, disjoint and deterministic:
- a hub id without `@split`: our train split is the hub's train split and our test split its test split
  (HUB_SPLITS lists the datasets whose held-out split has another name, e.g. HellaSwag's validation);
- a local file, or a hub id with `@split`: the rows are split by a hash of the question, 20% test
  (stages.data.tasks.split_of, keyed by the source kind, so the same question lands on the same side in every
  file of that layout).
Local files: .jsonl (one object per line), .json (a list of objects), .parquet. Hub datasets load through
`datasets.load_dataset(id, config, split=...)`. Every problem is a UserError of one line: a missing file or
unreachable hub id (offline: HF_HUB_OFFLINE=1), bad JSON, or a row without the layout's columns, named by its
`file:line` (`file:[i]` in a .json list, `file:row i` in parquet, `hub:id[split]:row i`).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError
from stages.data.tasks import Task, split_of
from stages.data.tasks.qa import CONVERTERS, RowError
from stages.data.tasks.spec import Source

# hub id -> (default config, our train split, our test split)
HUB_SPLITS = {
    "openai/gsm8k": ("main", "train", "test"),
    "allenai/ai2_arc": ("ARC-Easy", "train", "test"),
    "cais/mmlu": ("all", "validation", "test"),
    "Rowan/hellaswag": (None, "train", "validation"),  # its test split has no labels
}


def _local_rows(path: Path) -> Iterator[tuple[str, object]]:
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a .jsonl/.json/.parquet task file)")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield f"{path}:{line_no}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{path}:{line_no}: bad JSON: {exc.msg} at column {exc.colno}; "
                                        "expected one JSON object per line") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: bad JSON: {exc.msg}; expected a list of objects") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: holds a JSON {type(data).__name__}; expected a list of objects")
        yield from ((f"{path}:[{i}]", row) for i, row in enumerate(data))
    else:
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
        yield from ((f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist()))


def hub_split(source: Source, split: str) -> tuple[str | None, str]:
    """(config, hub split) that holds our `split` of a hub source."""
    config, train, test = HUB_SPLITS.get(source.name, (None, "train", "test"))
    if source.split:
        return source.config or config, source.split
    return source.config or config, train if split == "train" else test


def _hub_rows(source: Source, split: str) -> Iterator[tuple[str, object]]:
    import datasets
    config, name = hub_split(source, split)
    try:
        table = datasets.load_dataset(source.name, config, split=name)
    except Exception as exc:  # offline, unknown id, bad config or split: the user's to fix
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{source.spec}: cannot load hub dataset '{source.name}' (config {config}, split {name}): "
                        f"{first[:200]}; expected a reachable hub id or a local .jsonl/.json/.parquet file") from None
    yield from ((f"hub:{source.name}[{name}]:row {i}", dict(row)) for i, row in enumerate(table))


@lru_cache(maxsize=32)
def pool(source: Source, split: str) -> tuple[Task, ...]:
    """Every Task of the source's `split`, in row order; UserError on the first row that does not fit."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    hashed = source.local or source.split is not None
    rows = _local_rows(Path(source.name).expanduser()) if source.local else _hub_rows(source, split)
    convert = CONVERTERS[source.kind]
    tasks, n_rows = [], 0
    for where, row in rows:
        n_rows += 1
        try:
            task = convert(row, source.label)
        except RowError as exc:
            raise UserError(f"{where}: {exc}") from None
        task.meta["where"] = where
        if not hashed or split_of(source.kind, task.prompt_messages()[-1]["content"]) == split:
            tasks.append(task)
    if n_rows == 0:
        raise UserError(f"{source.spec}: no rows; expected {source.kind} rows (an empty task set)")
    return tuple(tasks)
