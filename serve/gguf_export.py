"""Export a llama-architecture checkpoint to one GGUF file (llama.cpp, LM Studio, Ollama).

    lifecycle export runs/tiny/rl --format gguf --out tiny-rl.gguf [--dtype f32|f16|q8_0]
    llama-cli -m tiny-rl.gguf -cnv            # uses the chat template stored in the file

Written with the `gguf` package's GGUFWriter, following llama.cpp's convert_hf_to_gguf.py for Llama:
  - tensors: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
    ffn_down}, output_norm, output (left out when the embeddings are tied: llama.cpp then reuses token_embd);
  - attn_q/attn_k rows are permuted (permute(), as LlamaModel.permute): HF's rotary embedding rotates the two
    halves of each head (rotate_half), llama.cpp rotates adjacent pairs; the permutation makes the two agree;
  - 1-D tensors (norms) stay f32 in every --dtype; q8_0 falls back to f16 for rows not a multiple of 32;
  - metadata: context length, sizes, head counts, rms eps, rope freq base, the file type.
Tokenizer: model "gpt2" (byte-level BPE: tokens in GPT-2's byte-to-unicode spelling, merges "a b"), token
types (our special tokens CONTROL, embedding rows past the tokenizer UNUSED "[PADn]"), bos/eos/pad ids,
add_bos_token false (our chat template writes <|bos|> itself, as transformers does), and the chat template
without its {% generation %} markers (gguf_chat_template(): same text, but plain Jinja can parse it).
Pre-tokenizer "smollm": llama.cpp splits every digit (\\p{N}) and then applies GPT-2's regex, which is exactly
our Digits(individual_digits=True) + ByteLevel(use_regex=True) (stages/tokenizer.py); "refact" and
"starcoder" name the same rule. A tokenizer trained with individual_digits: false is plain "gpt-2".
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import torch

from pipeline.errors import UserError

DTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_T = gguf.MODEL_TENSOR
LAYER_TENSORS = {  # HF name inside model.layers.N -> GGUF tensor kind
    "input_layernorm.weight": _T.ATTN_NORM, "self_attn.q_proj.weight": _T.ATTN_Q,
    "self_attn.k_proj.weight": _T.ATTN_K, "self_attn.v_proj.weight": _T.ATTN_V,
    "self_attn.o_proj.weight": _T.ATTN_OUT, "post_attention_layernorm.weight": _T.FFN_NORM,
    "mlp.gate_proj.weight": _T.FFN_GATE, "mlp.up_proj.weight": _T.FFN_UP, "mlp.down_proj.weight": _T.FFN_DOWN}
TOP_TENSORS = {"model.embed_tokens.weight": _T.TOKEN_EMBD, "model.norm.weight": _T.OUTPUT_NORM,
               "lm_head.weight": _T.OUTPUT}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k rows (per head: first half, second half) -> llama.cpp's interleaved rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute()."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of an HF Llama parameter (None for ones llama.cpp does not take)."""
    if hf_name in TOP_TENSORS:
        return gguf.TENSOR_NAMES[TOP_TENSORS[hf_name]] + ".weight"
    parts = hf_name.split(".", 3)
    if parts[:2] == ["model", "layers"] and len(parts) == 4 and parts[3] in LAYER_TENSORS:
        return gguf.TENSOR_NAMES[LAYER_TENSORS[parts[3]]].format(bid=int(parts[2])) + ".weight"
    return None


def _check_llama(config) -> None:
    if config.model_type != "llama":
        raise UserError(f"export --format gguf: only llama-architecture checkpoints are supported (model.arch: "
                        f"llama); this one is {config.model_type}. Use --format hf for it.")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or config.attention_bias or config.mlp_bias:
        raise UserError("export --format gguf: rope scaling and attention/MLP biases are not supported yet")


def gguf_chat_template(template: str) -> str:
    """The template without transformers' {% generation %} markers (training-only: they mark the assistant
    tokens for the loss mask and render nothing); plain Jinja runtimes such as llama-cpp-python's reject them."""
    return GENERATION_TAG.sub("", template)


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; UserError for one llama.cpp would split differently."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits", False), s.get("use_regex", True)) for s in steps]
    if model.get("type") == "BPE" and kinds == [("ByteLevel", False, True)]:
        return "gpt-2"
    if model.get("type") == "BPE" and kinds == [("Digits", True, True), ("ByteLevel", False, True)]:
        return "smollm"
    raise UserError(f"export --format gguf: no llama.cpp pre-tokenizer matches this tokenizer ({model.get('type')}, "
                    f"{[k[0] for k in kinds]}); only byte-level BPE as stages/tokenizer.py or GPT-2 trains it")


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer, n_vocab: int) -> None:
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    tokens, types = [], []
    for i in range(n_vocab):
        token = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if token is None else
                     gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"].get("merges", [])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(gguf_chat_template(tokenizer.chat_template))


def _add_tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, dtype: str) -> None:
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), q8), raw_dtype=q8)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def export_gguf(model, tokenizer, out: str | Path, dtype: str = "f16", name: str = "llm-lifecycle") -> dict:
    """Write `model` (an HF LlamaForCausalLM) and its tokenizer to `out`; returns {tensors, vocab, bytes}."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    config = model.config
    _check_llama(config)
    pre_tokenizer_name(tokenizer)  # fail before writing anything
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    n_vocab = model.get_input_embeddings().weight.shape[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")   # renamed into place when complete
    writer = gguf.GGUFWriter(str(part), "llama")
    writer.add_name(name)
    writer.add_file_type(DTYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    _write_tokenizer(writer, tokenizer, n_vocab)
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    written = 0
    for hf_name, data in state.items():
        target = gguf_name(hf_name)
        if target is None:
            continue
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        _add_tensor(writer, target, data, dtype)
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    part.replace(out)
    return {"tensors": written, "vocab": n_vocab, "bytes": out.stat().st_size}
