"""Tokenizer stage: train a byte-level BPE (the 256 byte values, then merges) or reuse an existing one.

    lifecycle run recipes/tiny.yaml --stages tokenizer
    lifecycle tokenize "Hello  world 123" --tokenizer runs/tiny/tokenizer

Follows GPT-2's byte-level BPE: text is UTF-8 bytes, each byte one of 256 base symbols, and training
learns merges of frequent adjacent pairs. Departures: digits are split one per token before BPE
(Llama-style) so numbers never merge into opaque chunks, and the chat special tokens are appended
after the merges (ids vocab_size-len(SPECIAL_TOKENS) ... vocab_size-1), so ids 0-255 are the bytes.
The result is a transformers tokenizer dir with our chat template (stages/data/chat_template.jinja).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

BOS = "<|bos|>"        # starts every document / conversation
PAD = "<|pad|>"        # padding only; never trained on
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"   # turn headers
END = "<|end|>"        # ends a turn; the eos token (generation stops here)
CALL, END_CALL = "<|calc|>", "<|/calc|>"          # calculator call written by the model
RESULT, END_RESULT = "<|result|>", "<|/result|>"  # calculator output inserted by the tool, never trained on
SPECIAL_TOKENS = [BOS, PAD, SYSTEM, USER, ASSISTANT, END, CALL, END_CALL, RESULT, END_RESULT]
CHAT_TEMPLATE_PATH = Path(__file__).parent / "data" / "chat_template.jinja"


def _byte_level_tokenizer(individual_digits: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.BPE())
    parts = [pre_tokenizers.Digits(individual_digits=True)] if individual_digits else []
    parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(parts)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, individual_digits: bool = True):
    """Train a byte-level BPE and wrap it as a transformers tokenizer with the chat special tokens."""
    from tokenizers import pre_tokenizers, trainers
    tok = _byte_level_tokenizer(individual_digits)
    n_merges_vocab = vocab_size - len(SPECIAL_TOKENS)
    if n_merges_vocab <= 256:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges (need > {256 + len(SPECIAL_TOKENS)})")
    trainer = trainers.BpeTrainer(vocab_size=n_merges_vocab, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return wrap(tok)


def wrap(tok):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=END, pad_token=PAD,
                                 additional_special_tokens=SPECIAL_TOKENS[2:])
    hf.chat_template = CHAT_TEMPLATE_PATH.read_text() if CHAT_TEMPLATE_PATH.is_file() else None
    hf.padding_side = "left"  # batched generation wants left padding; training code pads explicitly
    return hf


def ensure_chat_tokens(tokenizer) -> None:
    """A tokenizer from elsewhere (GPT-2, a hub model) gets our special tokens and chat template."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.bos_token is None:
        tokenizer.bos_token = BOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    tokenizer.eos_token = END
    if CHAT_TEMPLATE_PATH.is_file():
        tokenizer.chat_template = CHAT_TEMPLATE_PATH.read_text()


def encode_plain(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of raw text: no BOS/EOS added, and special-token strings ("<|end|>") inside the text are
    encoded as ordinary text, so data can never forge a turn marker."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def bytes_per_token(tokenizer, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in encode_plain(tokenizer, texts))
    return n_bytes / max(n_tokens, 1)


def _limited(texts: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        total += len(text)
        yield text


def collect_texts(data_cfg, seed: int, train_chars: int, val_chars: int) -> tuple[list[str], list[str]]:
    """Train documents up to train_chars and held-out ones up to val_chars, reading no further than needed
    (a streamed FineWeb is not read to the end)."""
    from stages.data.sources import iter_split
    train, val, n_train, n_val = [], [], 0, 0
    for held_out, doc in iter_split(data_cfg, seed):
        if held_out and n_val < val_chars:
            val.append(doc)
            n_val += len(doc)
        elif not held_out and n_train < train_chars:
            train.append(doc)
            n_train += len(doc)
        if n_train >= train_chars and n_val >= val_chars:
            break
    return train, val


def run(recipe, inputs, ctx) -> dict[str, float]:
    """Train (or reuse) the tokenizer; report compression on held-out text."""
    from transformers import AutoTokenizer
    from pipeline.errors import UserError
    cfg = recipe.tokenizer
    train_docs, val_docs = collect_texts(recipe.data, recipe.seed, 0 if cfg.from_ else cfg.max_train_chars,
                                         cfg.eval_chars)
    if not val_docs:
        raise UserError(f"data.val_fraction: no held-out documents for the compression report; add documents "
                        f"or raise data.val_fraction (now {recipe.data.val_fraction})")
    if cfg.from_:
        ctx.log(f"reusing tokenizer {cfg.from_}")
        tokenizer = AutoTokenizer.from_pretrained(cfg.from_)
        ensure_chat_tokens(tokenizer)
    else:
        n_chars = sum(len(d) for d in train_docs)
        ctx.log(f"training byte-level BPE to vocab {cfg.vocab_size} on {n_chars:,} chars ({len(train_docs)} documents)")
        tokenizer = train_bpe(train_docs, cfg.vocab_size, cfg.individual_digits)
    tokenizer.save_pretrained(ctx.out_dir)
    held_out = list(_limited(iter(val_docs), cfg.eval_chars))
    bpt = bytes_per_token(tokenizer, held_out)
    metrics = {"eval/bytes_per_token": bpt, "vocab_size": float(len(tokenizer))}
    ctx.tracker.log(metrics)
    ctx.log(f"held-out compression {bpt:.2f} bytes/token; e.g. {render_tokens(tokenizer, held_out[0][:80])}")
    return metrics


def render_tokens(tokenizer, text: str) -> str:
    """Pieces with spaces shown as '·' and newlines as '↵', joined by '|' (tiktokenizer style)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]).replace(" ", "·").replace("\n", "↵") for i in ids]
    return "|".join(pieces)


def tokenize_cli(args) -> int:
    from transformers import AutoTokenizer
    from pipeline.errors import UserError
    path = args.tokenizer or "runs/tiny/tokenizer"
    if not Path(path).is_dir():
        raise UserError(f"--tokenizer {path}: no tokenizer dir there (train one: make tokenizer, or pass --tokenizer DIR)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(args.text, add_special_tokens=False)["input_ids"]
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8'))} bytes")
    print(render_tokens(tokenizer, args.text))
    for i in ids:
        print(f"{i:>7}  {tokenizer.decode([i])!r}")
    return 0
