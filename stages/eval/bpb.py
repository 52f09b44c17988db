"""Held-out loss and bits per byte of a causal LM: the pretraining metric, comparable across tokenizers."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from stages.data.shards import token_byte_lengths
from stages.lm.bpe import encode_plain
from stages.lm.losses import bits_per_byte


@torch.no_grad()
def nll_sums(model, tokens: np.ndarray, seq_len: int, batch_size: int, byte_lengths: torch.Tensor,
             rank: int = 0, world: int = 1) -> torch.Tensor:
    """[nats over all targets, targets, nats over byte-carrying targets, their bytes] for this rank's
    share of the seq_len windows of `tokens` (float64, to be summed over ranks)."""
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    n_windows = math.ceil((len(tokens) - 1) / seq_len)
    mine = list(range(rank, n_windows, world))
    for i in range(0, len(mine), batch_size):
        rows = [tokens[w * seq_len: w * seq_len + seq_len + 1] for w in mine[i:i + batch_size]]
        groups: dict[int, list] = {}
        for row in rows:  # only the very last window can be shorter

            groups.setdefault(len(row), []).append(row)
        for rows_of_len in groups.values():
            win = torch.as_tensor(np.stack(rows_of_len), device=device)  # (B, t+1)
            logits = model(input_ids=win[:, :-1]).logits.float()         # (B, t, V)
            nll = F.cross_entropy(logits.flatten(0, 1), win[:, 1:].flatten(), reduction="none")  # (B*t,)
            nbytes = byte_lengths.to(device)[win[:, 1:].flatten()]
            sums += torch.stack([nll.sum().double(), torch.tensor(nll.numel(), device=device, dtype=torch.float64),
                                 (nll * (nbytes > 0)).sum().double(), nbytes.sum().double()])
    return sums


def val_bits_per_byte(model, tokenizer, texts: list[str] | None = None, tokens: np.ndarray | None = None,
                      seq_len: int | None = None, batch_size: int = 8, max_tokens: int = 65_536) -> dict[str, float]:
    """Validation loss (nats/token) and bits per UTF-8 byte of a causal LM on `texts` (each prefixed with
    BOS, special-token strings read as text) or on a token array. Special-token targets carry no bytes:
    they count in the loss but not in bits-per-byte."""
    if tokens is None:
        texts, ids = list(texts or []), []
        for i in range(0, len(texts), 64):  # tokenize only as much text as max_tokens needs
            ids += [t for row in encode_plain(tokenizer, texts[i:i + 64]) for t in [tokenizer.bos_token_id] + row]
            if len(ids) > max_tokens:
                break
        tokens = np.array(ids, dtype=np.int64)
    tokens = np.asarray(tokens[:max_tokens + 1], dtype=np.int64)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    was_training = model.training
    model.eval()
    sums = nll_sums(model, tokens, seq_len or limit, batch_size, torch.as_tensor(token_byte_lengths(tokenizer)))
    model.train(was_training)
    return {"val_loss": float(sums[0] / sums[1]), "val_bpb": bits_per_byte(float(sums[2]), int(sums[3]))}
