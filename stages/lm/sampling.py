"""Sample continuations of plain text from any Hugging Face causal LM dir (`lifecycle sample`).

Sampling uses model.generate (KV cache) and is stochastic unless a seed is given; temperature 0 is
greedy. The prompt is prefixed with the tokenizer's BOS (documents start with it in pretraining).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.errors import UserError
from stages.lm.bpe import encode_plain
from stages.lm.model import load_causal_lm


def load_for_sampling(checkpoint: str):
    looks_local = checkpoint.startswith(("/", ".", "~")) or Path(checkpoint).exists()
    if looks_local and not (Path(checkpoint).expanduser() / "config.json").is_file():
        raise UserError(f"{checkpoint}: not an HF model dir (no config.json); expected e.g. runs/tiny/pretrain")
    try:
        model, tokenizer = load_causal_lm(os.path.expanduser(checkpoint),
                                          device="cuda" if torch.cuda.is_available() else "cpu")
    except OSError as exc:
        raise UserError(f"{checkpoint}: cannot load a causal LM ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, tokenizer


def pad_id(tokenizer) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = encode_plain(tokenizer, [prompt])[0] if prompt else []
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id  # GPT-2 style: <|endoftext|> separates documents
    return ([bos] if bos is not None else []) + ids


@torch.no_grad()
def sample(model, tokenizer, prompt: str, n: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           max_new_tokens: int = 128, seed: int | None = None) -> list[str]:
    """n continuations of `prompt` (text after the prompt), KV-cached."""
    if n < 1 or max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise UserError("sample: need --n >= 1, --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")
    ids = prompt_ids(tokenizer, prompt)
    if not ids:
        raise UserError("--prompt: empty prompt and the tokenizer has no BOS token; give some text")
    torch.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    device = next(model.parameters()).device
    inputs = torch.tensor([ids] * n, device=device)  # (n, P)
    greedy = temperature == 0
    kwargs = {} if greedy else {"temperature": temperature, "top_k": top_k or None, "top_p": top_p}
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                         do_sample=not greedy, use_cache=True,
                         pad_token_id=pad_id(tokenizer), **kwargs)  # (n, P+new)
    return [tokenizer.decode(row[len(ids):], skip_special_tokens=True) for row in out]
