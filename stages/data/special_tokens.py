"""The chat format's special tokens: turn headers, the end-of-turn (eos) token and the tools' tags.

Every tokenizer the lifecycle builds or adopts carries these (stages/lm/bpe.py appends them after the
BPE merges); the chat template (chat_template.jinja beside this file) and the tool-aware sampler use them.
"""
from __future__ import annotations

from pathlib import Path

BOS = "<|bos|>"        # starts every document / conversation
PAD = "<|pad|>"        # padding only; never trained on
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"   # turn headers
END = "<|end|>"        # ends a turn; the eos token (generation stops here)
CALL, END_CALL = "<|calc|>", "<|/calc|>"          # calculator call written by the model
RESULT, END_RESULT = "<|result|>", "<|/result|>"  # a tool's output (value or passage), inserted, never trained on
SEARCH, END_SEARCH = "<|search|>", "<|/search|>"  # search query written by the model (stages/tools/search.py)
# in id order; a new tag goes at the end, where ensure_chat_tokens also adds it to a tokenizer made before it
SPECIAL_TOKENS = [BOS, PAD, SYSTEM, USER, ASSISTANT, END, CALL, END_CALL, RESULT, END_RESULT, SEARCH, END_SEARCH]
CHAT_TEMPLATE_PATH = Path(__file__).parent / "chat_template.jinja"
