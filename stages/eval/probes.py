"""Probes of what a model holds: regurgitation of its training text.

The regurgitation probe (after Carlini et al. 2021/2023, "extractable memorization"): for documents
of the training split and of the held-out split, feed the first `prefix_tokens` tokens and decode
greedily; a document counts as regurgitated when the next `continue_tokens` tokens match the
document exactly. Training fraction well above the held-out one means memorised text, not language.
"""
from __future__ import annotations

import torch

from pipeline.errors import UserError
from stages.lm.bpe import encode_plain
from stages.lm.sampling import pad_id


@torch.no_grad()
def _verbatim(model, tokenizer, docs: list[str], prefix_tokens: int, continue_tokens: int,
              batch_size: int = 32) -> list[int]:
    """Matching tokens (0..continue_tokens) of the greedy continuation, per document long enough."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = [([bos] if bos is not None else []) + ids for ids in encode_plain(tokenizer, docs)]
    start = prefix_tokens + (bos is not None)
    rows = [r[: start + continue_tokens] for r in rows if len(r) >= start + continue_tokens]
    device = next(model.parameters()).device
    matches = []
    for i in range(0, len(rows), batch_size):
        batch = torch.tensor(rows[i:i + batch_size], device=device)          # (B, P+C); equal lengths, no padding
        prefix, target = batch[:, :start], batch[:, start:]
        out = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=continue_tokens,
                             min_new_tokens=continue_tokens, do_sample=False,
                             pad_token_id=pad_id(tokenizer))[:, start:]  # (B, C)
        same = (out == target).long()
        matches += same.cumprod(dim=1).sum(dim=1).tolist()  # length of the exact-match run from the start
    return matches


def regurgitation(model, tokenizer, train_docs: list[str], val_docs: list[str], prefix_tokens: int = 32,
                  continue_tokens: int = 32) -> dict[str, float]:
    """Fraction of training vs held-out documents continued verbatim for continue_tokens tokens."""
    out: dict[str, float] = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        matches = _verbatim(model, tokenizer, docs, prefix_tokens, continue_tokens)
        if not matches:
            raise UserError(f"probe: no {split} document has {prefix_tokens} + {continue_tokens} tokens; "
                            "lower --prefix-tokens / --continue-tokens")
        out[f"probe/{split}_verbatim"] = sum(m == continue_tokens for m in matches) / len(matches)
        out[f"probe/{split}_match_tokens"] = sum(matches) / len(matches)
        out[f"probe/{split}_documents"] = float(len(matches))
    return out
