"""Build a Hugging Face causal LM from the recipe's size dial; load and save model dirs.

Every model we make is a plain transformers class (LlamaForCausalLM or GPT2LMHeadModel) saved with
save_pretrained (safetensors) and its tokenizer beside it, so it loads anywhere transformers does.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from pipeline.errors import UserError


def build_config(model_cfg, tokenizer):
    """An HF config for a fresh model: sizes from the recipe, special token ids from the tokenizer."""
    rows = model_cfg.vocab_size or len(tokenizer)
    if rows < len(tokenizer):
        raise UserError(f"model.vocab_size: {rows} is smaller than the tokenizer's {len(tokenizer)} tokens "
                        "(expected null or at least the tokenizer's size)")
    ids = dict(vocab_size=rows, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if model_cfg.arch == "gpt2":
        return GPT2Config(n_layer=model_cfg.n_layer, n_embd=model_cfg.n_embd, n_head=model_cfg.n_head,
                          n_inner=int(model_cfg.mlp_ratio * model_cfg.n_embd), n_positions=model_cfg.seq_len,
                          resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout,
                          attn_pdrop=model_cfg.dropout, tie_word_embeddings=model_cfg.tie_embeddings, **ids)
    # Llama's SwiGLU MLP has 3 matrices; 2/3 of mlp_ratio keeps the parameter count of a 2-matrix MLP.
    hidden = int(2 * model_cfg.mlp_ratio * model_cfg.n_embd / 3)
    hidden = 16 * ((hidden + 15) // 16)
    return LlamaConfig(hidden_size=model_cfg.n_embd, intermediate_size=hidden,
                       num_hidden_layers=model_cfg.n_layer, num_attention_heads=model_cfg.n_head,
                       num_key_value_heads=model_cfg.n_kv_head or model_cfg.n_head,
                       max_position_embeddings=model_cfg.seq_len, tie_word_embeddings=model_cfg.tie_embeddings,
                       attn_implementation="sdpa", **ids)


def build_model(model_cfg, tokenizer):
    """A freshly initialised causal LM (fp32)."""
    config = build_config(model_cfg, tokenizer)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config)


def mask_padded_vocab(model, vocab: int) -> None:
    """Give embedding rows past the tokenizer (model.vocab_size padding) logit -inf in every forward.

    Our sampler never draws them (stages.lm.generation cuts the logits to the tokenizer's size), so RL's
    log-probs, ratios and KL must normalise over the same tokens. A forward hook, not a weight change:
    nothing of it is saved."""
    head = model.get_output_embeddings()
    if head is None or head.weight.shape[0] <= vocab:
        return

    def cut(module, inputs, logits):
        return logits.masked_fill(torch.arange(logits.size(-1), device=logits.device) >= vocab, float("-inf"))

    head.register_forward_hook(cut)


def count_parameters(model, exclude_embeddings: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total


def load_causal_lm(path: str | Path, device: str = "cpu", dtype=None):
    """Model + tokenizer from an HF dir or hub id (tokenizer from the same place)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs).to(device)
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | Path) -> None:
    """save_pretrained (safetensors) + the tokenizer beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
