"""Checkpoints and a running server for the serve tests (imported by tests/test_serve*.py).

Two real LlamaForCausalLM dirs under runs/tiny/: `sft` (random weights) and `calc`, whose weights are set
so that it is a bigram table: after <|assistant|> it writes <|calc|>7*6<|/calc|>, and after <|/result|> it
ends the turn. Only a server that runs the calculator inside generation answers "[calc 7*6 = 42]"; without
the tool the model would end right after <|/calc|>.
"""
from __future__ import annotations

import pytest
import torch

CALC_ANSWER = "[calc 7*6 = 42]"


def tiny_llama(tokenizer, seed: int, seq_len: int = 256, **overrides):
    from pipeline.schema import Model
    from stages.lm.model import build_model
    torch.manual_seed(seed)
    cfg = Model(arch="llama", n_layer=2, n_embd=32, n_head=2, seq_len=seq_len).model_copy(update=overrides)
    return build_model(cfg, tokenizer)


def scripted_llama(tokenizer, table: dict[int, int], seed: int = 0):
    """A llama whose every layer adds nothing, so logits depend on the last token only: next = table[last]."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.randn(len(tokenizer), 64)                     # (V, H): h = rmsnorm(emb[last])
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.zero_()
        for src, dst in table.items():
            model.lm_head.weight[dst] += 2.0 * emb[src] / emb[src].pow(2).mean().sqrt()
    return model


def calc_table(tok) -> dict[int, int]:
    t = tok.convert_tokens_to_ids
    seven, star, six = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "7*6")
    return {t("<|assistant|>"): t("<|calc|>"), t("<|calc|>"): seven, seven: star, star: six,
            six: t("<|/calc|>"), t("<|/calc|>"): t("<|end|>"), t("<|/result|>"): t("<|end|>")}


def save(model, tokenizer, path, system: str = "You are a tiny test model."):
    from stages.lm.model import save_model
    save_model(model, tokenizer, path)
    (path / "system_prompt.txt").write_text(system)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer):
    """{"sft": dir, "calc": dir} under <tmp>/runs/tiny/."""
    root = tmp_path_factory.mktemp("serve") / "runs" / "tiny"
    return {"sft": save(tiny_llama(tiny_tokenizer, 0), tiny_tokenizer, root / "sft"),
            "calc": save(scripted_llama(tiny_tokenizer, calc_table(tiny_tokenizer)), tiny_tokenizer, root / "calc")}


@pytest.fixture(scope="module")
def server(checkpoints):
    """Both checkpoints served on a free 127.0.0.1 port, votes in runs/tiny/battles.jsonl."""
    from pathlib import Path

    from serve.app import Server
    from serve.engine import Engine
    engines = [Engine.load(checkpoints["sft"]), Engine.load(checkpoints["calc"])]
    srv = Server(engines, "127.0.0.1", 0, Path(checkpoints["sft"]).parent / "battles.jsonl").start()
    yield srv
    srv.stop()
