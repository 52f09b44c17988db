"""A trained reward-model dir -> a batched, no-grad reward function on the right device.

    from reward.model_scorer import load_reward_fn
    rm = load_reward_fn("runs/tiny/rm", device="cuda")
    rm(prompts, completions)        # -> list[float]; prompts are rendered prompt texts, completions decoded
                                    #    texts (special tokens kept), as reward/combine.py passes them
    rm.score_ids([[...token ids...]])   # -> tensor (N,)

The RM dir is a plain AutoModelForSequenceClassification (num_labels=1) dir. HF's score head has no bias,
so the rm stage stores the centring shift in config.json as `reward_offset` (mean reward of reference
answers); this scorer subtracts it, so reference answers score 0 on average (InstructGPT's normalisation).
A bare `from_pretrained` reader gets the raw logit: subtract config.reward_offset yourself.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.errors import UserError


def rm_input_ids(tokenizer, prompt: str, completion: str, max_length: int) -> list[int]:
    """Token ids the RM reads: prompt text + completion text, the last max_length tokens (the answer is at the end)."""
    ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


@torch.no_grad()
def reward_logits(model, sequences: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Raw scores (N,) of token-id sequences, right-padded in batches of similar length."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(len(sequences))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)     # (B, T) right-padded
        mask = torch.zeros((len(idx), width), dtype=torch.long)                 # (B, T)
        for row, i in enumerate(idx):
            input_ids[row, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
            mask[row, :len(sequences[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (B, 1)
        out[idx] = logits[:, 0].float().cpu()
    return out


class RewardModelScorer:
    """Callable reward part: fn(prompts, completions, **fields) -> list[float]."""

    def __init__(self, rm_dir: str | Path, device: str | None = None, batch_size: int = 32, max_length: int = 1024):
        rm_dir = str(rm_dir)
        if not (Path(rm_dir) / "config.json").is_file() and Path(rm_dir).exists():
            raise UserError(f"{rm_dir}: not a reward-model dir (no config.json); run the rm stage first")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(rm_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(rm_dir).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise UserError(f"{rm_dir}: a reward model has num_labels=1, this one has {self.model.config.num_labels}")
        self.offset = float(getattr(self.model.config, "reward_offset", 0.0) or 0.0)
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            raise UserError(f"{rm_dir}: config.pad_token_id is not set (needed to find each sequence's last token)")
        self.batch_size, self.max_length = batch_size, max_length

    def score_ids(self, sequences: list[list[int]]) -> torch.Tensor:
        """Centred rewards (N,) of token-id sequences (prompt + completion)."""
        if not sequences:
            return torch.empty(0)
        return reward_logits(self.model, sequences, self.pad_id, self.batch_size, self.device) - self.offset

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        seqs = [rm_input_ids(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions, strict=True)]
        return self.score_ids(seqs).tolist()


def load_reward_fn(rm_dir: str | Path, device: str | None = None, batch_size: int = 32) -> RewardModelScorer:
    return RewardModelScorer(rm_dir, device=device, batch_size=batch_size)
