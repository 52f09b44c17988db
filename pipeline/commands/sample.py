"""`lifecycle sample CKPT --prompt TEXT`: continuations of plain text from any HF causal LM dir.

    lifecycle sample runs/tiny/pretrain --prompt "And God said" --n 3 --temperature 0.8 --top-k 50
    lifecycle sample gpt2 --prompt "The meaning of life" --seed 0          # a hub id works where online
"""
from __future__ import annotations

from pipeline.commands import sampling_arguments
from stages.lm.sampling import load_for_sampling, sample


def add_arguments(p) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="")
    sampling_arguments(p)


def main(args) -> int:
    model, tokenizer = load_for_sampling(args.checkpoint)
    texts = sample(model, tokenizer, args.prompt, n=args.n, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(args.prompt + text)
    return 0
