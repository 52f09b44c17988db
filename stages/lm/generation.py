"""Batched sampling with a KV cache and the tools (calculator, search) run inside the loop.

    from stages.lm.generation import generate
    out = generate(model, tok, [render_prompt(tok, msgs)], max_new_tokens=96, temperature=1.0,
                   num_samples=8, seed=0)          # out[prompt][sample] -> Completion
    for token_id, from_tool in stream(model, tok, prompt_ids, max_new_tokens=96): ...   # one row, live

Prompts are left-padded into one batch (positions from the attention mask), prefilled once, then
decoded one token per step for all rows. When a row samples <|/calc|>, the text since its last <|calc|>
goes to stages/tools/calculator.py and "<|result|>VALUE<|/result|>" is queued for that row; when it samples
<|/search|>, the text since its last <|search|> goes to the search index (`search=`, stages/tools/search.py)
and "<|result|>PASSAGE<|/result|>" is queued. The next steps feed those tokens instead of sampling
(tool_mask = 1: not sampled, so no loss and no log-prob for them), which keeps every row on the same
step without re-running the cache. Finished rows (<|end|> or the token budget, which counts inserted
tokens too) are dropped from the batch and its cache.
Completion.text is the decoded completion with special tokens kept (<|calc|>..., the final <|end|>).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from stages.data.special_tokens import CALL, END, END_CALL, END_RESULT, END_SEARCH, RESULT, SEARCH
from stages.tools.calculator import tool_result
from stages.tools.search import SearchIndex
from stages.tools.search import tool_result as search_result


@dataclass
class Completion:
    prompt_ids: list[int]
    completion_ids: list[int]
    tool_mask: list[int]      # 1 = inserted by the tool (not sampled: no loss, no logprob)
    text: str                 # decoded completion, special tokens included
    finished: bool            # emitted <|end|>


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and nucleus filtering of (B, V) logits; filtered entries become -inf."""
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _next_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen) -> torch.Tensor:
    """(B,) next ids from (B, V) logits; V is the tokenizer's size (padded embedding rows cut off)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class _Row:
    def __init__(self, prompt_ids: list[int]):
        self.prompt_ids, self.ids, self.tool = prompt_ids, [], []
        self.forced: deque[int] = deque()
        self.finished = False


def _special_id(tokenizer, token: str) -> int | None:
    """The token's id, or None when the tokenizer lacks it (one made before the token existed)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    return None if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token) else tid


def tool_ids(tokenizer) -> dict:
    """The ids the sampler watches: <|end|>, and each tool's opening and closing tags."""
    return {"end": tokenizer.convert_tokens_to_ids(END), "call": tokenizer.convert_tokens_to_ids(CALL),
            "end_call": tokenizer.convert_tokens_to_ids(END_CALL), "search": _special_id(tokenizer, SEARCH),
            "end_search": _special_id(tokenizer, END_SEARCH)}


def closes_call(token: int, ids: dict) -> bool:
    return token == ids["end_call"] or (ids["end_search"] is not None and token == ids["end_search"])


def _tool_tokens(tokenizer, row: _Row, ids: dict, search: SearchIndex | None = None) -> list[int]:
    """Ids of <|result|>VALUE<|/result|> for the call that just closed in this row (calculator or search)."""
    is_search = ids["end_search"] is not None and row.ids[-1] == ids["end_search"]
    open_id, open_tag, close_tag = (ids["search"], SEARCH, END_SEARCH) if is_search else (ids["call"], CALL, END_CALL)
    starts = [i for i, t in enumerate(row.ids) if t == open_id]
    body = row.ids[starts[-1] + 1:-1] if starts else []
    text = tokenizer.decode(body, skip_special_tokens=True) if starts else ""
    if not starts:
        value = f"error: no {open_tag} before {close_tag}"
    else:
        value = search_result(search, text) if is_search else tool_result(text)
    return tokenizer(f"{RESULT}{value}{END_RESULT}", add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                    top_p: float, top_k: int, use_tools: bool, gen, search: SearchIndex | None = None) -> list[_Row]:
    device = next(model.parameters()).device
    vocab = len(tokenizer)  # a model may pad its embedding past the tokenizer (model.vocab_size)
    ids = tool_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["end"]
    rows = [_Row(list(p)) for p in prompts]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)    # (B, T) left-padded
    attn = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p):] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)                                          # (B, T)
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=positions, use_cache=True)
    cache, logits = out.cache, out.logits[:, -1, :vocab]                                    # (B, V)
    next_pos = positions[:, -1] + 1                                                         # (B,)
    active = list(range(len(rows)))  # batch slot -> row
    for _ in range(max_new_tokens):
        sampled = _next_tokens(logits, temperature, top_k, top_p, gen).tolist()
        fed = []
        for slot, r in enumerate(active):
            row = rows[r]
            forced = bool(row.forced)
            token = row.forced.popleft() if forced else sampled[slot]
            row.ids.append(token)
            row.tool.append(int(forced))
            if not forced and token == ids["end"]:
                row.finished = True
            elif not forced and use_tools and closes_call(token, ids):
                row.forced.extend(_tool_tokens(tokenizer, row, ids, search))
            fed.append(token)
        keep = [slot for slot, r in enumerate(active) if not rows[r].finished and len(rows[r].ids) < max_new_tokens]
        if not keep:
            break
        if len(keep) < len(active):  # drop finished rows from the batch and the cache
            index = torch.tensor(keep, device=device)
            cache.reorder_cache(index)
            attn, next_pos = attn[index], next_pos[index]
            active, fed = [active[s] for s in keep], [fed[s] for s in keep]
        attn = torch.cat([attn, attn.new_ones((len(active), 1))], dim=1)                   # (K, T+1)
        step_ids = torch.tensor(fed, dtype=torch.long, device=device).unsqueeze(1)          # (K, 1)
        out = model(input_ids=step_ids, attention_mask=attn, position_ids=next_pos.unsqueeze(1),
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1, :vocab]
        next_pos = next_pos + 1
    return rows


def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, num_samples: int = 1, use_tools: bool = True,
             seed: int | None = None, batch_size: int = 64,
             search: SearchIndex | None = None) -> list[list[Completion]]:
    """num_samples completions for each prompt (token-id lists), as out[prompt][sample].

    temperature 0 is greedy. With a seed the result is reproducible for the same batch_size. `search`
    answers <|search|> calls (without it they get "error: no search index")."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    out: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            rows = _generate_batch(model, tokenizer, [prompts[p] for p, _ in chunk], max_new_tokens,
                                   temperature, top_p, top_k, use_tools, gen, search)
            for (p, s), row in zip(chunk, rows):
                text = tokenizer.decode(row.ids, skip_special_tokens=False)
                out[p][s] = Completion(row.prompt_ids, row.ids, row.tool, text, row.finished)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def stream(model, tokenizer, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, top_k: int = 0, use_tools: bool = True, seed: int | None = None,
           search: SearchIndex | None = None):
    """Yield (token_id, from_tool) one at a time for a single prompt (the chat CLI's live output).

    Same rules as generate(): stops after <|end|>; tool results are yielded with from_tool=True."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    vocab = len(tokenizer)
    ids = tool_ids(tokenizer)
    row = _Row(list(prompt_ids))
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        cache, logits = out.cache, out.logits[:, -1, :vocab]                               # (1, V)
        for _ in range(max_new_tokens):
            forced = bool(row.forced)
            token = row.forced.popleft() if forced else int(_next_tokens(logits, temperature, top_k, top_p, gen)[0])
            row.ids.append(token)
            yield token, forced
            if not forced and token == ids["end"]:
                return
            if not forced and use_tools and closes_call(token, ids):
                row.forced.extend(_tool_tokens(tokenizer, row, ids, search))
            out = model(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1, :vocab]
    finally:
        model.train(was_training)
