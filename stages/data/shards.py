"""Token shards: tokenize the corpus once into flat uint16/uint32 files, then read windows with numpy.

    dir = build_shards(recipe.data, seed, tokenizer, run_dir / "shards")   # cached, resumable
    shards = ShardSet(dir); x, y = TrainWindows(shards, seq_len, seed).batch(step, ...)

Layout of a shard dir (runs/<name>/shards/<key>/, key = hash of the data config, seed and tokenizer):
    train_000000.bin ...  val_000000.bin ...   raw token ids, BOS before every document
    progress.json   shards finished so far (a rerun after a kill skips their documents)
    manifest.json   written last: source, dtype, per-split document/token/byte counts, tokenizer fingerprint

Documents never straddle shards (a shard is closed at the first document boundary past
data.shard_tokens). Tokenizing runs in data.num_workers processes (0 = all cores); special-token
strings inside raw text are encoded as plain text, never as special tokens. Training windows are
(seq_len + 1)-token slices inside one shard; each epoch visits every window once in a seeded order
(nanoGPT-style: windows cross document boundaries, separated by BOS, with no attention masking).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

from pipeline.errors import UserError
from pipeline.logging_setup import is_terminal
from stages.data.sources import iter_split

CHUNK_CHARS = 1 << 18  # documents per tokenizing task: about this many characters

_WORKER: dict = {}


# ---------------------------------------------------------------- tokenizer facts
def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the whole tokenizer (vocab, merges, pre-tokenizer, special tokens)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 2**16 else np.uint32


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits-per-byte."""
    n = len(tokenizer)
    lengths = np.zeros(n, dtype=np.int64)
    byte_level = set(pre_tokenizers.ByteLevel.alphabet())
    special = set(tokenizer.all_special_ids)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
        if i in special or piece is None:
            continue
        if all(ch in byte_level for ch in piece):  # byte-level BPE: one symbol per byte
            lengths[i] = len(piece)
        else:  # other tokenizers (sentencepiece): decoded text, approximate for partial characters
            lengths[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return lengths


# ---------------------------------------------------------------- tokenizing workers
def _init_worker(tokenizer_json: str, bos_id: int) -> None:
    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True  # "<|end|>" inside a web page is text, not a turn marker
    _WORKER.update(tok=tok, bos=bos_id)


def byte_pair_counts(docs: list[str]) -> np.ndarray:
    """(257, 256) counts of (previous byte, byte); row 256 = the document start. For the bigram baseline."""
    counts = np.zeros(257 * 256, dtype=np.int64)
    for doc in docs:
        b = np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        prev = np.concatenate([[256], b[:-1]])
        counts += np.bincount(prev * 256 + b, minlength=257 * 256)
    return counts.reshape(257, 256)


def _encode_chunk(task: tuple[str, int, list[str]]) -> tuple[str, int, np.ndarray, np.ndarray]:
    """(split, index after the chunk's last document, BOS+ids of every document, byte-pair counts)."""
    split, end_index, docs = task
    encs = _WORKER["tok"].encode_batch(docs, add_special_tokens=False)
    parts = [np.array([_WORKER["bos"]] + enc.ids, dtype=np.int64) for enc in encs]
    return split, end_index, np.concatenate(parts), byte_pair_counts(docs)


def _chunks(documents, done: dict[str, int], chunk_chars: int):
    """Group (is_val, doc) into per-split tasks, skipping documents already in finished shards."""
    pending = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    for index, (held_out, doc) in enumerate(documents):
        split = "val" if held_out else "train"
        if index < done[split]:
            continue
        pending[split].append(doc)
        size[split] += len(doc)
        if size[split] >= chunk_chars:
            yield split, index + 1, pending[split]
            pending[split], size[split] = [], 0
    for split in ("train", "val"):
        if pending[split]:
            yield split, index + 1, pending[split]


# ---------------------------------------------------------------- building
def shard_key(data_cfg, seed: int, tok_fp: str) -> str:
    cfg = data_cfg.model_dump(mode="json", exclude={"num_workers"})
    blob = json.dumps({"data": cfg, "seed": seed, "tokenizer": tok_fp}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, data) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(part, path)


def build_shards(data_cfg, seed: int, tokenizer, cache_root: Path, log: Callable[[str], None] = print,
                 progress_bar: bool = True) -> Path:
    """Tokenize the recipe's documents into shards under cache_root/<key>/ (no-op when finished)."""
    tok_fp = tokenizer_fingerprint(tokenizer)
    out = Path(cache_root) / shard_key(data_cfg, seed, tok_fp)
    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / "progress.json"
    state = json.loads(progress_path.read_text()) if progress_path.is_file() else {
        "train": {"shards": [], "next": 0}, "val": {"shards": [], "next": 0}}
    for name in os.listdir(out):  # partial shards of a killed run
        if name.endswith((".bin", ".npy")) and not any(s["file"] == name.replace(".pairs.npy", ".bin") for sp in ("train", "val") for s in state[sp]["shards"]):
            os.remove(out / name)
    dtype = token_dtype(len(tokenizer))
    workers = data_cfg.num_workers or os.cpu_count() or 1
    skipped = sum(len(state[s]["shards"]) for s in ("train", "val"))
    log(f"tokenizing {data_cfg.source} into {out} with {workers} process(es)"
        + (f"; {skipped} finished shard(s) kept" if skipped else ""))
    buffers = {"train": [], "val": []}

    pairs = {"train": np.zeros((257, 256), np.int64), "val": np.zeros((257, 256), np.int64)}

    def flush(split: str, end_index: int) -> None:
        tokens = np.concatenate(buffers[split]).astype(dtype)
        name = f"{split}_{len(state[split]['shards']):06d}.bin"
        tokens.tofile(out / name)
        np.save(out / name.replace(".bin", ".pairs.npy"), pairs[split])
        docs = int((tokens == tokenizer.bos_token_id).sum())
        state[split]["shards"].append({"file": name, "tokens": int(tokens.size), "documents": docs,
                                       "bytes": int(pairs[split].sum()), "next": end_index})
        state[split]["next"] = end_index
        buffers[split], pairs[split] = [], np.zeros((257, 256), np.int64)
        _write_json(progress_path, state)

    # a task holds at most about a shard's worth of text (a token is at least one character)
    tasks = _chunks(iter_split(data_cfg, seed), {s: state[s]["next"] for s in ("train", "val")},
                    min(CHUNK_CHARS, data_cfg.shard_tokens))
    last_end = {"train": state["train"]["next"], "val": state["val"]["next"]}
    for split, end_index, ids, counts in _run_tasks(tasks, tokenizer, workers, progress_bar):
        buffers[split].append(ids)
        pairs[split] += counts
        last_end[split] = end_index
        if sum(b.size for b in buffers[split]) >= data_cfg.shard_tokens:
            flush(split, end_index)
    for split in ("train", "val"):
        if buffers[split]:
            flush(split, last_end[split])
    _finish(out, data_cfg, seed, tokenizer, tok_fp, state, log)
    return out


def _run_tasks(tasks, tokenizer, workers: int, progress_bar: bool):
    """Tokenize tasks in order, in `workers` processes, with at most 2 tasks per worker in flight."""
    from tqdm import tqdm
    init_args = (tokenizer.backend_tokenizer.to_str(), tokenizer.bos_token_id)
    # a bar for people at a terminal only: in a log file its redraws are noise (the log line says it all)
    bar = tqdm(desc="tokenizing", unit=" docs", disable=not (progress_bar and is_terminal()), mininterval=1.0)
    if workers <= 1:
        _init_worker(*init_args)
        for task in tasks:
            bar.update(len(task[2]))
            yield _encode_chunk(task)
        bar.close()
        return
    import multiprocessing as mp
    # spawn: forking a process that already runs torch/tokenizers threads can deadlock
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        inflight: deque = deque()
        for task in tasks:
            inflight.append((len(task[2]), pool.apply_async(_encode_chunk, (task,))))
            while len(inflight) >= 2 * workers:
                n, res = inflight.popleft()
                bar.update(n)
                yield res.get()
        while inflight:
            n, res = inflight.popleft()
            bar.update(n)
            yield res.get()
    bar.close()


def _finish(out: Path, data_cfg, seed: int, tokenizer, tok_fp: str, state: dict, log) -> None:
    if not state["train"]["shards"] or not state["val"]["shards"]:
        raise UserError(f"data: the {'validation' if state['train']['shards'] else 'training'} split is empty; "
                        f"add documents or change data.val_fraction (now {data_cfg.val_fraction})")
    splits = {}
    for split in ("train", "val"):
        shards = state[split]["shards"]
        splits[split] = {"shards": shards, "documents": sum(s["documents"] for s in shards),
                         "tokens": sum(s["tokens"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}
    manifest = {
        "source": data_cfg.model_dump(mode="json"), "seed": seed, "tokenizer_fingerprint": tok_fp,
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "dtype": np.dtype(token_dtype(len(tokenizer))).name, "splits": splits,
    }
    _write_json(out / "manifest.json", manifest)
    t, v = splits["train"], splits["val"]
    log(f"shards: train {t['documents']:,} docs / {t['tokens']:,} tokens in {len(t['shards'])} shard(s), "
        f"val {v['documents']:,} docs / {v['tokens']:,} tokens; {t['bytes'] / max(t['tokens'], 1):.2f} bytes/token")


# ---------------------------------------------------------------- reading
class ShardSet:
    """Memory-mapped view of a finished shard dir."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.dtype = np.dtype(self.manifest["dtype"])

    def arrays(self, split: str) -> list[np.memmap]:
        return [np.memmap(self.path / s["file"], dtype=self.dtype, mode="r")
                for s in self.manifest["splits"][split]["shards"]]

    def byte_pairs(self, split: str) -> np.ndarray:
        """(257, 256) byte-pair counts of the split's text (row 256: document start)."""
        return sum(np.load(self.path / s["file"].replace(".bin", ".pairs.npy"))
                   for s in self.manifest["splits"][split]["shards"])

    def head(self, split: str, max_tokens: int | None = None) -> np.ndarray:
        """The split's first max_tokens tokens (all when None), concatenated across shards."""
        parts, total = [], 0
        for arr in self.arrays(split):
            take = arr if max_tokens is None else arr[: max_tokens - total]
            parts.append(np.asarray(take, dtype=np.int64))
            total += take.size
            if max_tokens is not None and total >= max_tokens:
                break
        return np.concatenate(parts)


class TrainWindows:
    """Seeded, resumable order of (seq_len + 1)-token windows; batches are pure functions of the step."""

    def __init__(self, shards: ShardSet, seq_len: int, seed: int):
        self.arrays = shards.arrays("train")
        self.seq_len, self.seed = seq_len, seed
        counts = np.array([max(0, (a.size - 1) // seq_len) for a in self.arrays], dtype=np.int64)
        if counts.sum() == 0:
            raise ValueError(f"training split has fewer than {seq_len + 1} tokens")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # window index -> shard via searchsorted
        self.num_windows = int(counts.sum())
        self._order_epoch, self._order = -1, None

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._order_epoch = epoch
        return self._order

    def windows(self, start: int, count: int) -> np.ndarray:
        """Windows number start .. start+count-1 of the endless epoch-by-epoch stream: (count, seq_len+1)."""
        out = np.empty((count, self.seq_len + 1), dtype=np.int64)
        for row, k in enumerate(range(start, start + count)):
            epoch, pos = divmod(k, self.num_windows)
            w = int(self._order_for(epoch)[pos])
            shard = int(np.searchsorted(self.offsets, w, side="right") - 1)
            begin = (w - int(self.offsets[shard])) * self.seq_len
            out[row] = self.arrays[shard][begin: begin + self.seq_len + 1]
        return out

    def micro_batch(self, step: int, micro: int, rank: int, world: int, micro_bs: int, accum: int):
        """Rank `rank`'s micro-batch `micro` of optimizer step `step` as (x, y) int64 arrays (micro_bs, T).

        A step's global batch is windows [step*G, (step+1)*G), G = accum*world*micro_bs; micro-step m
        on rank r takes rows (m*world + r)*micro_bs ... +micro_bs, so N ranks x micro-batch b see the
        same rows per micro-step as 1 rank x N*b.
        """
        global_bs = accum * world * micro_bs
        start = step * global_bs + (micro * world + rank) * micro_bs
        win = self.windows(start, micro_bs)  # (B, T+1)
        return win[:, :-1], win[:, 1:]
