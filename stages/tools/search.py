"""The search tool: BM25 over short passages of a corpus, for what the model writes between <|search|> and <|/search|>.

    from stages.tools.search import SearchIndex, load_search_index, passages_from_documents
    index = SearchIndex.build(passages_from_documents(docs))   # docs: Iterable[str]
    index.save(model_dir)                                      # into <model_dir>/search/
    index = load_search_index(model_dir)                       # None when the dir has no index
    index.tool_result("Veltra Osmund")                         # the best passage, or "error: why"

Scoring is bm25s (Lucene's BM25 as sparse matrices): maintained, needs only numpy and scipy, saves the
index as plain .npy and JSON files, and scores a query by reading only its terms' columns, so a large
corpus stays fast; rank_bm25 keeps a Python dict per passage and has no save format. The terms are ours, not bm25s's
tokenizer's (which drops one-character words): lower-cased runs of letters and digits minus English
stopwords and question words, so a made-up name such as "Veltra Osmund" is two searchable terms, a year
or an initial counts, and "Who is Veltra Osmund?" searches for the name alone. Ties go to the earlier
passage.
Passages are kept on one line, with chat markers (<|...|>) removed and square brackets made round, so an
inserted passage can neither forge a turn nor break the chat's shown form "[search QUERY -> PASSAGE]"
(stages/lm/chat.py, which serve/engine.py maps back to tokens).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

SEARCH_DIR = "search"       # the index's folder inside a model dir
PASSAGES_FILE = "passages.json"
MAX_QUERY_CHARS = 200       # longest query accepted
_TERM = re.compile(r"\w+")
_MARKER = re.compile(r"<\|[^<>|\s]{0,40}\|>")   # <|end|>, <|endoftext|>, ...: a tokenizer's special tokens
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
# Lucene's English stopwords, and the question words a query written as a question carries (no topic in them)
_STOPWORDS = frozenset(STOPWORDS_EN) | {"who", "whom", "whose", "what", "which", "when", "where", "why", "how",
                                        "do", "does", "did"}


def terms(text: str) -> list[str]:
    """The searchable terms of a text: lower-cased \\w+ runs that are not stopwords."""
    return [t for t in _TERM.findall(text.lower()) if t not in _STOPWORDS]


def clean_passage(text: str) -> str:
    """One line, no chat markers, round brackets for square ones."""
    text = _MARKER.sub(" ", text).replace("[", "(").replace("]", ")")
    return " ".join(text.split())


def _pieces(sentence: str, max_chars: int) -> list[str]:
    """A sentence cut at spaces into pieces of at most max_chars (a longer word is cut where it must be)."""
    out, current = [], ""
    for word in sentence.split():
        while len(word) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            out.append(current)
            current = ""
        current = f"{current} {word}" if current else word
    return out + [current] if current else out


def passages_from_documents(docs: Iterable[str], max_chars: int = 240) -> list[str]:
    """Documents cut into passages of at most max_chars: each paragraph (blank-line separated) is cut into
    sentences, and consecutive sentences of a paragraph are merged while they fit, so a sentence that
    names its subject only as "she" mostly stays beside the one that names it. Empty passages are
    dropped and repeats kept once, in first-seen order."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    out: dict[str, None] = {}
    for doc in docs:
        for paragraph in _PARAGRAPH.split(doc):
            current = ""
            for sentence in _SENTENCE_END.split(clean_passage(paragraph)):
                for piece in _pieces(sentence, max_chars):
                    if current and len(current) + 1 + len(piece) <= max_chars:
                        current = f"{current} {piece}"
                        continue
                    if current:
                        out.setdefault(current)
                    current = piece
            if current:
                out.setdefault(current)
    return list(out)


class SearchIndex:
    """BM25 over a fixed list of passages; build() or load(), then search() or tool_result()."""

    def __init__(self, passages: list[str], bm25: bm25s.BM25):
        self.passages, self.bm25 = passages, bm25

    @classmethod
    def build(cls, passages: Iterable[str]) -> SearchIndex:
        kept = list(dict.fromkeys(p for p in map(clean_passage, passages) if p))
        if not kept:
            raise ValueError("search index: no passages to index")
        bm25 = bm25s.BM25()
        bm25.index([terms(p) for p in kept], show_progress=False)
        return cls(kept, bm25)

    def save(self, model_dir: str | Path) -> Path:
        """Write the index to <model_dir>/search/ (replacing one there); returns that folder."""
        folder = Path(model_dir) / SEARCH_DIR
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.bm25.save(str(folder), show_progress=False)
        (folder / PASSAGES_FILE).write_text(json.dumps(self.passages, ensure_ascii=False))
        return folder

    @classmethod
    def load(cls, model_dir: str | Path) -> SearchIndex:
        folder = Path(model_dir) / SEARCH_DIR
        passages = json.loads((folder / PASSAGES_FILE).read_text())
        bm25 = bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
        return cls(passages, bm25)

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 1) -> list[str]:
        """Up to k passages sharing a term with the query, best first (ties: the earlier passage)."""
        known = [t for t in dict.fromkeys(terms(query)) if t in self.bm25.vocab_dict]
        if not known or k < 1:
            return []
        scores = self.bm25.get_scores(known)                    # (N,)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.passages[i] for i in order if scores[i] > 0]

    def tool_result(self, query: str) -> str:
        """What the tool inserts between <|result|> and <|/result|>: the best passage, or "error: why"."""
        query = " ".join(query.split())
        if not query:
            return "error: empty query"
        if len(query) > MAX_QUERY_CHARS:
            return f"error: query longer than {MAX_QUERY_CHARS} characters"
        hits = self.search(query, k=1)
        return hits[0] if hits else "error: no passage matches"


def tool_result(index: SearchIndex | None, query: str) -> str:
    """The search tool's answer to a query, for a sampler that may have no index."""
    return index.tool_result(query) if index is not None else "error: no search index"


def load_search_index(model_dir: str | Path) -> SearchIndex | None:
    """The index saved in a model dir, or None when it has none (or is not a local dir, e.g. a hub id)."""
    return SearchIndex.load(model_dir) if (Path(model_dir) / SEARCH_DIR / PASSAGES_FILE).is_file() else None


def copy_search_index(src_dir: str | Path, dst_dir: str | Path) -> bool:
    """Carry a model dir's index to a model trained from it (what chat and serve load); True if there was one."""
    src = Path(src_dir) / SEARCH_DIR
    if not (src / PASSAGES_FILE).is_file():
        return False
    shutil.copytree(src, Path(dst_dir) / SEARCH_DIR, dirs_exist_ok=True)
    return True
