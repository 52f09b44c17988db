"""Pure tensor maths for every stage: no models, no data, no state. Each function is tested against
hand-computed values in tests/test_losses.py.

Shapes: B = batch, T = tokens, V = vocab, K = completions per prompt, G = group size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy. logits (B, T, V) predict labels (B, T) shifted by one."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)                         # (B*(T-1),)
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=ignore_index)
