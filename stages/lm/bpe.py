"""Byte-level BPE tokenizers (GPT-2 style) as transformers tokenizers, with the chat special tokens.

Text is UTF-8 bytes, each byte one of 256 base symbols, and training learns merges of frequent adjacent
pairs. Departures from GPT-2: digits are split one per token before BPE (Llama-style) so numbers never
merge into opaque chunks, and the chat special tokens are appended after the merges (ids
vocab_size-len(SPECIAL_TOKENS) ... vocab_size-1), so ids 0-255 are the bytes.
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stages.data.special_tokens import BOS, CHAT_TEMPLATE_PATH, END, PAD, SPECIAL_TOKENS


def _byte_level_tokenizer(individual_digits: bool):
    tok = Tokenizer(models.BPE())
    parts = [pre_tokenizers.Digits(individual_digits=True)] if individual_digits else []
    parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(parts)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, individual_digits: bool = True):
    """Train a byte-level BPE and wrap it as a transformers tokenizer with the chat special tokens."""
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


def render_tokens(tokenizer, text: str) -> str:
    """Pieces with spaces shown as '·' and newlines as '↵', joined by '|' (tiktokenizer style)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]).replace(" ", "·").replace("\n", "↵") for i in ids]
    return "|".join(pieces)
