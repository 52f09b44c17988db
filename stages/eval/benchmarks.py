"""Standard benchmarks: GSM8K by generation; ARC-Easy, ARC-Challenge, HellaSwag, MMLU by log-likelihood.

    lifecycle eval runs/tiny/sft --suite gsm8k --limit 100
    lifecycle eval runs/tiny/pretrain --suite hellaswag --data-file hellaswag_val.jsonl   # offline

Each benchmark loads from the Hugging Face hub through `datasets` (hub id, config, split below) or,
offline, from a local .jsonl/.parquet file with the hub's columns (tests/data/ has a tiny sample of
each format). Multiple choice follows lm-evaluation-harness: every choice is a continuation of the
same context and the model picks the one with the highest summed log-probability (`acc`) or the
highest log-probability per byte of the continuation (`acc_norm`, the usual HellaSwag/ARC number).
Departure: MMLU is scored on the answer texts as continuations (as for ARC) rather than on the
letters A-D after a listed prompt; tiny models cannot use letter indirection, so letters would only
measure letter bias. GSM8K is zero-shot: chat models get the question through the chat template
(calculator on), base models a "Question: ... Answer:" prompt; the number after `####`, else the
last `Answer:` line, else the last number in the text is compared with the reference numerically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import datasets
import torch

from pipeline.errors import UserError
from pipeline.files import read_lines
from stages.data.benchmark_rows import (
    Choice,
    Problem,
    arc_item,
    extract_gsm8k_answer,
    gsm8k_item,
    hellaswag_item,
    mmlu_item,
)
from stages.data.chat import render_prompt
from stages.lm.generation import generate


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub_id: str
    config: str | None
    split: str
    kind: str  # "mc" (log-likelihood over choices) or "gen" (generate, extract, compare)


BENCHMARKS = {
    "gsm8k": Benchmark("gsm8k", "openai/gsm8k", "main", "test", "gen"),
    "arc_easy": Benchmark("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test", "mc"),
    "arc_challenge": Benchmark("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", "mc"),
    "hellaswag": Benchmark("hellaswag", "Rowan/hellaswag", None, "validation", "mc"),  # test has no labels
    "mmlu": Benchmark("mmlu", "cais/mmlu", "all", "test", "mc"),
}


# ------------------------------------------------------------------ loading
def load_rows(name: str, data_file: str | None = None, limit: int | None = None) -> list[dict]:
    """Raw rows of a benchmark: from a local jsonl/parquet file, else from the hub via `datasets`."""
    bench = _benchmark(name)
    if data_file:
        path = Path(data_file)
        if not path.is_file():
            raise UserError(f"--data-file {data_file}: no such file (expected a .jsonl or .parquet with {name}'s columns)")
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if builder is None:
            raise UserError(f"--data-file {data_file}: unsupported extension '{path.suffix}'; expected .jsonl or .parquet")
        if builder == "json":  # datasets would fail on bad bytes only when a row is read, with a traceback
            for _ in read_lines(path, f"{name} benchmark file"):
                pass
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:  # datasets raises many types (bad JSON, not UTF-8, not parquet)
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"--data-file {data_file}: cannot read it as {builder} ({type(exc).__name__}: {first})") from None
    else:
        try:
            ds = datasets.load_dataset(bench.hub_id, bench.config, split=bench.split)
        except Exception as exc:  # offline / no such dataset: say how to work offline
            raise UserError(f"{name}: could not load {bench.hub_id} from the hub ({type(exc).__name__}); "
                            f"pass a local file with --data-file (eval.benchmark_files in a recipe)") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [dict(row) for row in ds]


def load_benchmark(name: str, data_file: str | None = None, limit: int | None = None) -> list:
    """Items ready to score: list[Choice] for multiple choice, list[Problem] for GSM8K."""
    convert = {"gsm8k": gsm8k_item, "arc_easy": arc_item, "arc_challenge": arc_item,
               "hellaswag": hellaswag_item, "mmlu": mmlu_item}[_benchmark(name).name]
    rows = load_rows(name, data_file, limit)
    try:
        return [convert(row) for row in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{data_file or name}: row does not have {name}'s columns ({type(exc).__name__}: {exc})") from None


def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"benchmark '{name}': unknown; expected one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def choice_logprobs(model, tokenizer, item: Choice, device: str = "cpu") -> list[float]:
    """Summed log p(choice | context) for every choice, in one padded batch."""
    ctx_ids = tokenizer(item.context, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ctx_ids = [tokenizer.bos_token_id] + ctx_ids
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 2048)
    conts = [cont[-(max_len - 1):] for cont in conts]  # keep >= 1 context token to condition on
    rows = [(ctx_ids + cont)[-max_len:] for cont in conts]  # context is cut from the left if too long
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (C, T) right-padded
    attention = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)  # (C, T-1, V): position t predicts token t+1
    targets = input_ids[:, 1:].to(device)
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()  # (C, T-1)
    # the continuation is the last len(cont) tokens of each row: predicted at positions end-1-n .. end-2
    return [float(token_logps[i, len(ids) - 1 - len(cont): len(ids) - 1].sum())
            for i, (ids, cont) in enumerate(zip(rows, conts))]


def evaluate_multiple_choice(model, tokenizer, items: list[Choice], device: str = "cpu") -> dict[str, float]:
    """acc (argmax summed log-prob) and acc_norm (argmax log-prob per byte of the choice)."""
    if not items:
        raise UserError("multiple-choice eval: no questions to score")
    model.eval()
    hits = hits_norm = 0
    for item in items:
        scores = choice_logprobs(model, tokenizer, item, device)
        per_byte = [s / max(len(c.encode("utf-8")), 1) for s, c in zip(scores, item.choices)]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == item.gold)
        hits_norm += int(max(range(len(per_byte)), key=per_byte.__getitem__) == item.gold)
    return {"acc": hits / len(items), "acc_norm": hits_norm / len(items), "n": float(len(items))}


def gsm8k_prompt(tokenizer, question: str, chat: bool) -> list[int]:
    if chat:
        return render_prompt(tokenizer, [{"role": "user", "content": question}])
    ids = tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def answers_match(predicted: str | None, reference: str) -> bool:
    if predicted is None:
        return False
    try:
        return Decimal(predicted) == Decimal(reference)
    except InvalidOperation:
        return predicted.strip() == reference.strip()


def evaluate_gsm8k(model, tokenizer, items: list[Problem], *, chat: bool, max_new_tokens: int = 256,
                   batch_size: int = 32) -> tuple[dict[str, float], list[list]]:
    """Greedy generation, answer extraction, exact numeric match. Returns metrics and table rows."""
    if not items:
        raise UserError("gsm8k eval: no questions to score")
    prompts = [gsm8k_prompt(tokenizer, p.question, chat) for p in items]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                           use_tools=chat, batch_size=batch_size)
    rows, hits = [], 0
    for problem, samples in zip(items, completions):
        text = samples[0].text
        if not chat:  # a base model keeps writing new "Question:" blocks; its answer is before them
            text = text.split("\nQuestion:")[0]
        predicted = extract_gsm8k_answer(text)
        ok = answers_match(predicted, problem.answer)
        hits += ok
        rows.append([problem.question, text, predicted, problem.answer, float(ok)])
    return {"acc": hits / len(items), "n": float(len(items))}, rows


def run_benchmark(name: str, model, tokenizer, *, data_file: str | None = None, limit: int | None = None,
                  chat: bool = False, max_new_tokens: int = 256, device: str = "cpu") -> tuple[dict, list]:
    """Load and score one benchmark; metrics are named eval/<name>/<metric>."""
    items = load_benchmark(name, data_file, limit)
    if BENCHMARKS[name].kind == "gen":
        metrics, rows = evaluate_gsm8k(model, tokenizer, items, chat=chat, max_new_tokens=max_new_tokens)
    else:
        metrics, rows = evaluate_multiple_choice(model, tokenizer, items, device), []
    metrics = {f"eval/{name}/{k}": v for k, v in metrics.items() if not math.isnan(v)}
    return metrics, rows
