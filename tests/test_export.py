"""`lifecycle export`: GGUF checked with the gguf package's reader (and, slow, run in llama.cpp); the HF dir."""
from __future__ import annotations

import json

import gguf
import jinja2
import numpy as np
import pytest
import torch

from pipeline.cli import main as lifecycle
from serve.gguf_export import export_gguf, gguf_chat_template, gguf_name, permute, unpermute
from stages.data.special_tokens import SPECIAL_TOKENS
from tests.serve_helpers import save, tiny_llama


def _fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _rope_hf(x: torch.Tensor, pos: int, base: float) -> torch.Tensor:
    """HF Llama rotary on one head (d,): rotate_half pairs (i, i + d/2)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cos(pos * inv).repeat(2), torch.sin(pos * inv).repeat(2)
    return x * cos + torch.cat([-x[d // 2:], x[:d // 2]]) * sin


def _rope_ggml(x: torch.Tensor, pos: int, base: float) -> torch.Tensor:
    """llama.cpp's LLAMA rope (GGML_ROPE_TYPE_NORM) on one head: adjacent pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[0::2], x[1::2]
    c, s = torch.cos(pos * inv), torch.sin(pos * inv)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(d)


def test_permutation_turns_hf_rotary_into_llama_cpp_rotary():
    torch.manual_seed(0)
    n_head, head_dim, width = 3, 8, 12
    w = torch.randn(n_head * head_dim, width, dtype=torch.float64)
    x = torch.randn(width, dtype=torch.float64)
    hf = (w @ x).reshape(n_head, head_dim)
    gg = (torch.from_numpy(permute(w.numpy(), n_head)) @ x).reshape(n_head, head_dim)
    for h in range(n_head):
        rotated_hf = _rope_hf(hf[h], pos=5, base=10000.0).numpy()
        rotated_gg = _rope_ggml(gg[h], pos=5, base=10000.0).numpy()
        # the same rotated vector with its features in llama.cpp's order, so every q.k (attention) is unchanged
        assert np.allclose(rotated_gg, permute(rotated_hf.reshape(head_dim, 1), 1).reshape(head_dim))
    assert np.array_equal(unpermute(permute(w.numpy(), n_head), n_head), w.numpy())


@pytest.fixture()
def untied(tiny_tokenizer):
    """GQA (2 query heads, 1 kv head), untied output, embedding padded 8 rows past the tokenizer."""
    return tiny_llama(tiny_tokenizer, 1, seq_len=64, n_kv_head=1, tie_embeddings=False,
                      vocab_size=len(tiny_tokenizer) + 8)


def test_gguf_f32_tensors_and_metadata_match_the_hf_model(tmp_path, untied, tiny_tokenizer):
    tok, model = tiny_tokenizer, untied
    info = export_gguf(model, tok, tmp_path / "m.gguf", "f32", name="tiny/sft")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()
    expected = {gguf_name(k): k for k in state}
    assert set(tensors) == set(expected) and info["tensors"] == len(tensors) == 2 * 9 + 3
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_k.weight"} <= set(tensors)
    c = model.config
    for name, t in tensors.items():
        hf = state[expected[name]].numpy()
        assert list(t.shape) == list(reversed(hf.shape)) and t.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.asarray(t.data).reshape(hf.shape)
        if name.endswith("attn_q.weight"):
            data = unpermute(data, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            data = unpermute(data, c.num_key_value_heads)
        assert np.array_equal(data, hf), name
    f = _fields(reader)
    n_vocab = len(tok) + 8
    assert f["general.architecture"] == "llama" and f["general.name"] == "tiny/sft"
    assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"]) == (64, 32, 2)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (2, 1)
    assert f["llama.feed_forward_length"] == c.intermediate_size and f["llama.rope.dimension_count"] == 16
    assert f["llama.rope.freq_base"] == 10000.0 and abs(f["llama.attention.layer_norm_rms_epsilon"] - c.rms_norm_eps) < 1e-12
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"
    assert f["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok)))) + [
        f"[PAD{i}]" for i in range(len(tok), n_vocab)]
    types = f["tokenizer.ggml.token_type"]
    end = tok.convert_tokens_to_ids("<|end|>")
    assert types[end] == gguf.TokenType.CONTROL and types[tok.convert_tokens_to_ids("a")] == gguf.TokenType.NORMAL
    assert types[len(tok):] == [gguf.TokenType.UNUSED] * 8 and types.count(gguf.TokenType.CONTROL) == len(SPECIAL_TOKENS)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.padding_token_id"]) \
        == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert f["tokenizer.ggml.add_bos_token"] is False
    template = f["tokenizer.chat_template"]
    assert "{% generation %}" not in template and "{% generation %}" in tok.chat_template   # plain Jinja parses it
    jinja2.Environment().from_string(template)
    with pytest.raises(jinja2.TemplateSyntaxError, match="generation"):
        jinja2.Environment().from_string(tok.chat_template)
    convo = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    for prompt in (True, False):                                            # ... and it renders the same text
        assert tok.apply_chat_template(convo, chat_template=template, tokenize=False, add_generation_prompt=prompt) \
            == tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=prompt)


def test_gguf_f16_q8_tied_and_refusals(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    model = tiny_llama(tok, 2, seq_len=64)                                  # tied embeddings (the default)
    export_gguf(model, tok, tmp_path / "h.gguf", "f16")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "h.gguf").tensors}
    assert "output.weight" not in tensors                                    # llama.cpp reuses token_embd
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    emb = model.model.embed_tokens.weight.detach().numpy()
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(emb.shape), emb.astype(np.float16))
    export_gguf(model, tok, tmp_path / "q.gguf", "q8_0")
    t = {t.name: t for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}["token_embd.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(emb.shape)
    assert np.abs(back - emb).max() <= np.abs(emb).max() / 127 + 1e-6
    from pipeline.errors import UserError
    gpt2 = tiny_llama(tok, 0, arch="gpt2")
    with pytest.raises(UserError, match="only llama-architecture"):
        export_gguf(gpt2, tok, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


def _manifest(path, stage, inputs, metrics, config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"stage": stage, "inputs": inputs, "metrics": metrics,
                                                    "config": config, "wall_time_s": 12.5, "git_commit": "abc123"}))


def test_hf_export_is_a_clean_dir_with_the_lineage_in_its_model_card(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run = tmp_path / "runs" / "tiny"
    model = tiny_llama(tiny_tokenizer, 3, seq_len=64)
    sft = save(model, tiny_tokenizer, run / "sft")
    (run / "sft" / "metrics.jsonl").write_text("{}\n")                      # run artifacts stay behind
    _manifest(run / "tokenizer", "tokenizer", {}, {"eval/bytes_per_token": 3.7}, {"data": {"source": "embedded"}})
    _manifest(run / "pretrain", "pretrain", {"tokenizer": {"stage": "tokenizer", "path": "runs/tiny/tokenizer"}},
              {"eval/val_bpb": 1.91}, {"data": {"source": "embedded"}, "pretrain": {"max_steps": 300}})
    _manifest(run / "sft", "sft", {"model": {"stage": "pretrain", "path": "runs/tiny/pretrain"}},
              {"eval/acc": 0.465, "train/loss": 0.3}, {"sft": {"families": ["arithmetic"], "max_steps": 900}})
    out = tmp_path / "export"
    assert lifecycle(["export", sft, "--format", "hf", "--out", str(out)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= files
    assert not files & {"metrics.jsonl", "manifest.json", "system_prompt.txt"}
    card = (out / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| ") and "stage" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["tokenizer", "pretrain", "sft"]
    assert "val_bpb=1.91" in rows[1] and "max_steps=300" in rows[1] and "acc=0.465" in rows[2]
    assert "families=['arithmetic']" in rows[2] and "model: pretrain" in rows[2] and "abc123" in card
    assert "<|assistant|>" in card and "<|calc|>" in card
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False) == "<|bos|><|user|>hi<|end|><|assistant|>"
    assert lifecycle(["export", sft, "--format", "hf", "--out", str(out)]) == 2          # exists: no --force
    assert lifecycle(["export", str(tmp_path / "nope"), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2


@pytest.mark.slow
def test_llama_cpp_runs_the_f32_export_like_transformers(tmp_path, tiny_tokenizer):
    llama_cpp = pytest.importorskip("llama_cpp", reason="pip install llama-cpp-python (builds from its sdist, minutes)")
    from stages.data.chat import render_prompt
    from stages.lm.generation import generate
    tok = tiny_tokenizer
    model = tiny_llama(tok, 4, seq_len=128, n_kv_head=1, tie_embeddings=False)
    with torch.no_grad():                        # peaked logits, so no greedy choice hangs on rounding
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.eval()
    export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    f32 = llama_cpp.GGML_TYPE_F32                # llama.cpp's KV cache is f16 by default: ~1e-3 off alone
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=128, logits_all=True, verbose=False,
                          n_threads=2, seed=0, type_k=f32, type_v=f32)
    assert llm.metadata["tokenizer.chat_template"] == gguf_chat_template(tok.chat_template)
    text = "In the beginning 123 + 456 = 579. The quick brown fox: strawberry 9.11 > 9.9?"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok(text, add_special_tokens=False)["input_ids"]
    chat = render_prompt(tok, [{"role": "user", "content": "What is 2 + 3?"}])
    assert llm.tokenize(tok.decode(chat, skip_special_tokens=False).encode(), add_bos=False, special=True) == chat
    llm.eval(chat)
    ours = model(torch.tensor([chat])).logits[0].detach().numpy()          # (T, V)
    theirs = np.asarray(llm.scores[:len(chat)])
    assert np.abs(theirs - ours).max() < 1e-3
    (greedy,), = generate(model, tok, [chat], max_new_tokens=16, temperature=0.0, use_tools=False)
    continuation = []
    for token in llm.generate(chat, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        continuation.append(token)
        if len(continuation) == len(greedy.completion_ids) or token == tok.eos_token_id:
            break
    assert continuation == greedy.completion_ids
    # llama-cpp-python's own chat path: it renders the template from the file (plain Jinja) and stops at <|end|>
    answer = llm.create_chat_completion([{"role": "user", "content": "What is 2 + 3?"}], temperature=0.0,
                                        max_tokens=len(greedy.completion_ids), repeat_penalty=1.0)
    expected = tok.decode(greedy.completion_ids, skip_special_tokens=True).replace("\ufffd", "")  # it drops bad bytes
    assert answer["choices"][0]["message"]["content"] == expected and len(expected) > 5
