"""Sample from any Hugging Face causal LM dir, and probe a base model for regurgitation.

    lifecycle sample runs/tiny/pretrain --prompt "And God said" --n 3 --temperature 0.8 --top-k 50
    lifecycle sample gpt2 --prompt "The meaning of life" --seed 0          # a hub id works where online
    lifecycle probe regurgitation runs/tiny/pretrain --recipe recipes/tiny.yaml

Sampling uses model.generate (KV cache) and is stochastic unless --seed is given; --temperature 0
is greedy. The prompt is prefixed with the tokenizer's BOS (documents start with it in pretraining).

The regurgitation probe (after Carlini et al. 2021/2023, "extractable memorization"): for documents
of the training split and of the held-out split, feed the first --prefix-tokens tokens and decode
greedily; a document counts as regurgitated when the next --continue-tokens tokens match the
document exactly. Training fraction well above the held-out one means memorised text, not language.
"""
from __future__ import annotations

import os

import torch

from pipeline.errors import UserError


def _load(checkpoint: str):
    from pathlib import Path
    from stages.lm.model import load_causal_lm
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


def _pad_id(tokenizer) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    from stages.tokenizer import encode_plain
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
                         pad_token_id=_pad_id(tokenizer), **kwargs)  # (n, P+new)
    return [tokenizer.decode(row[len(ids):], skip_special_tokens=True) for row in out]


def sample_cli(args) -> int:
    model, tokenizer = _load(args.checkpoint)
    texts = sample(model, tokenizer, args.prompt, n=args.n, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(args.prompt + text)
    return 0


# ---------------------------------------------------------------- regurgitation probe
@torch.no_grad()
def _verbatim(model, tokenizer, docs: list[str], prefix_tokens: int, continue_tokens: int,
              batch_size: int = 32) -> list[int]:
    """Matching tokens (0..continue_tokens) of the greedy continuation, per document long enough."""
    from stages.tokenizer import encode_plain
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
                             pad_token_id=_pad_id(tokenizer))[:, start:]  # (B, C)
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


def probe_cli(args) -> int:
    from pipeline.recipe import load_recipe
    from stages.data.sources import iter_split
    recipe = load_recipe(args.recipe)
    train, val = [], []
    for held_out, doc in iter_split(recipe.data, recipe.seed):
        bucket = val if held_out else train
        if len(bucket) < args.documents:
            bucket.append(doc)
        if len(train) >= args.documents and len(val) >= args.documents:
            break
    model, tokenizer = _load(args.checkpoint)
    result = regurgitation(model, tokenizer, train, val, args.prefix_tokens, args.continue_tokens)
    print(f"regurgitation of {args.checkpoint} on {recipe.data.source} data "
          f"(prefix {args.prefix_tokens} tokens, greedy, verbatim for {args.continue_tokens} tokens):")
    for split in ("train", "val"):
        print(f"  {split:<5} {result[f'probe/{split}_verbatim']:6.1%} verbatim, "
              f"{result[f'probe/{split}_match_tokens']:5.1f} tokens match on average "
              f"({result[f'probe/{split}_documents']:.0f} documents)")
    return 0
