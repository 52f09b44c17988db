"""Reward-model data: ranked prompts as token ids (one sequence per completion), per-token process
labels, the held-out split, batches, and the RM itself (a sequence classifier on the SFT model).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from pipeline.errors import UserError
from reward.model_scorer import rm_input_ids
from reward.ranking import TOP_TIER, Ranked
from stages.data.chat import render_text
from stages.data.special_tokens import END


@dataclass
class Example:
    seqs: list[list[int]]     # one token-id sequence (prompt + completion) per completion
    ranks: list[int]          # 0 = best, equal = tie
    family: str
    gold: list[int] | None    # verifier tiers, higher = better
    source: str
    labels: list[list[int]] | None = None  # per token of each seq, for rm.process_coef (process_labels)


def load_reward_model(model_dir: str, device):
    """The SFT checkpoint as a sequence classifier (num_labels=1) and its tokenizer, checked to match."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"rm: no tokenizer in '{model_dir}' (the RM shares the SFT model's tokenizer): {exc}") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is expected: the head is new
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 loads it partitioned (empty)
    if len(tokenizer) > rows:
        raise UserError(f"rm: tokenizer of '{model_dir}' has {len(tokenizer)} tokens but the model embeds {rows}; "
                        "the RM must share the SFT model's tokenizer")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        want, got = getattr(model.config, name, None), getattr(tokenizer, name)
        if want is not None and got is not None and want != got:
            raise UserError(f"rm: tokenizer of '{model_dir}' has {name}={got} but the model was trained with {want}; "
                            "the RM must share the SFT model's tokenizer")
    if END not in tokenizer.get_vocab() or tokenizer.pad_token_id is None:
        raise UserError(f"rm: tokenizer of '{model_dir}' lacks the chat tokens ({END}, pad); init the RM from a "
                        "model trained with this project's tokenizer (or one passed through ensure_chat_tokens)")
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads each sequence's last non-pad token
    return model.to(device), tokenizer


def encode(ranked: list[Ranked], tokenizer, max_length: int, process: bool = False) -> list[Example]:
    """Token ids of every completion (and, with process=True, per-token process labels where the prompt has
    a reference answer and verifier tiers)."""

    def token_ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for r in ranked:
        prompt = render_text(tokenizer, r.prompt_messages, add_generation_prompt=True) if r.prompt_messages else ""
        seqs = [rm_input_ids(tokenizer, prompt, c, max_length) for c in r.completions]
        labels = None
        if process and r.reference and r.gold:
            reference = token_ids(r.reference)
            labels = [process_labels(seq, token_ids(c), reference, tier)
                      for seq, c, tier in zip(seqs, r.completions, r.gold)]
        out.append(Example(seqs, r.ranks, r.family, r.gold, r.source, labels))
    return out


def process_labels(seq: list[int], completion: list[int], reference: list[int], tier: int) -> list[int]:
    """Per-token targets of seq (prompt + completion ids, maybe cut on the left) for the process loss.

    -1 on the prompt. On the completion, 1 while it is still on a path to a right, well-formed answer and
    0 from its first wrong token: every token when the verifier rates it correct and well formed, else the
    tokens before the first one that differs from the task's reference answer (at the latest its last token:
    a completion cut short went wrong by stopping). The built-in tasks' working is deterministic, so that
    token is the first mistake. All -1 when seq does not end with the completion."""
    n = min(len(seq), len(completion))
    if seq[len(seq) - n:] != completion[len(completion) - n:]:
        return [-1] * len(seq)
    good = len(completion)
    if tier < TOP_TIER:
        good = 0
        while good < min(len(completion), len(reference)) and completion[good] == reference[good]:
            good += 1
        good = min(good, len(completion) - 1)
    start = len(seq) - len(completion)  # where completion token 0 sits (negative when cut)
    return [-1 if p < start else int(p - start < good) for p in range(len(seq))]


def is_test(key: str, fraction: float) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_key(r: Ranked) -> str:
    """What the held-out split hashes: the prompt's text, so a prompt drawn twice (identity and "I don't know"
    questions come from small pools and repeat under different ids) is never on both sides; the prompt id
    where there is no prompt (whole-text pairs)."""
    return json.dumps(r.prompt_messages, sort_keys=True) if r.prompt_messages else r.prompt_id


def global_batches(n: int, per_step: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: a seeded shuffle per epoch cut into chunks of per_step.

    A short last chunk is dropped (as DataLoader's drop_last), so that N processes x b prompts step
    exactly like 1 process x N*b: each chunk holds N x prompts_per_batch prompts and every rank takes
    its slice.
    """
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        batches += [order[i:i + per_step] for i in range(0, n - per_step + 1, per_step)]
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """B prompts with up to K completions -> N = sum K sequences (one forward each) + (B, K) ranks."""
    k = max(len(e.seqs) for e in examples)
    seqs = [s for e in examples for s in e.seqs]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)       # (N, T) right-padded
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)         # (N, T)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
    ranks = torch.full((len(examples), k), -1, dtype=torch.long)               # (B, K), -1 = no completion
    slots = []                                                                  # (N,) position in the (B*K) grid
    for b, e in enumerate(examples):
        ranks[b, :len(e.ranks)] = torch.tensor(e.ranks, dtype=torch.long)
        slots += [b * k + j for j in range(len(e.seqs))]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "ranks": ranks,
           "slots": torch.tensor(slots, dtype=torch.long)}
    if any(e.labels for e in examples):
        labels = torch.full((len(seqs), width), -1, dtype=torch.long)          # (N, T), -1 = not scored
        rows = [lab for e in examples for lab in (e.labels or [[-1] * len(s) for s in e.seqs])]
        for i, lab in enumerate(rows):
            labels[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        out["token_labels"] = labels
    return out
