"""Rankings of K completions per prompt, from the sources a recipe mixes (`rm.rankers`), and their pairs.

    from reward.ranking import collect_rankings, ranking_pairs
    ranked = collect_rankings(recipe.rm, rollouts, device="cpu")     # list[Ranked]
    ranking_pairs([0, 2, 1])  -> [(0, 1), (0, 2), (2, 1)]           # (winner, loser) completion indices

A ranking is a list `ranks` with one entry per completion: 0 = best; equal numbers are ties (no pair).
Sources, each contributing its own Ranked examples (a prompt ranked by two sources appears twice):
- verifier: for prompts with a checkable answer (the built-in task families). Tiers, best first:
  3 correct and well formed > 2 correct > 1 wrong but well formed > 0 malformed and wrong.
  Tie rule (`rm.tie_break`): "none" keeps same-tier completions tied (no pair is trained on them);
  "shorter" ranks the shorter text (characters) first within a tier (same result, fewer words), equal
  lengths stay tied. Identical texts always tie.
- judge: any HF chat model dir scores each completion pointwise: the logit of "Yes" minus "No" after
  "Is this response correct and well formatted?"; ranks follow the score (equal scores tie). InstructGPT
  used people; pointwise judging is a cheap stand-in that any chat model can do.
- human: the rankings log written by the ranking page (reward/ranking_page.py).
The verifier's tiers ride along as `gold` on every example whose prompt has a checkable answer, so
the RM's agreement with the gold ranking can be measured whatever source trained it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.errors import UserError
from pipeline.files import read_lines
from reward.ranking_page import read_rankings
from stages.data.conversations import parse_hub_spec
from stages.data.special_tokens import END
from stages.data.tasks import Task, is_well_formed, score

JUDGE_QUESTION = ("Here is a question and a response.\n\nQuestion:\n{prompt}\n\nResponse:\n{response}\n\n"
                  "Is the response correct and well formatted? Answer Yes or No.")


@dataclass
class Ranked:
    prompt_id: str
    family: str
    prompt_messages: list[dict] | None   # a chat prompt; None when the completions carry the whole text
    completions: list[str]               # texts as generated (special tokens kept; finished ones end with <|end|>)
    ranks: list[int]                     # 0 = best, equal = tie
    source: str                          # verifier | judge | human | pairs:<dataset>
    gold: list[int] | None = None        # verifier tiers (higher = better) where the answer is checkable
    reference: str | None = None         # the task's own answer (for centring the reward)
    meta: dict = field(default_factory=dict)


def ranking_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    """All (winner, loser) index pairs of a ranking: C(K,2) without ties."""
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if 0 <= ranks[i] < ranks[j]]


def ranks_from_order(order: list[int]) -> list[int]:
    """A best-to-worst order of completion indices -> ranks (ranks[order[0]] = 0)."""
    ranks = [0] * len(order)
    for position, index in enumerate(order):
        ranks[index] = position
    return ranks


def ranks_from_scores(scores: list) -> list[int]:
    """Dense ranks of scores, higher = better; equal scores tie."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) for s in scores]


def _task(record: dict):
    messages = list(record["prompt_messages"]) + [{"role": "assistant", "content": record.get("reference", "")}]
    return Task(record["family"], messages, record["answer"], dict(record.get("meta") or {}))


TOP_TIER = 3  # verifier_tier of an answer that is correct and well formed


def verifier_tier(task, text: str) -> int:
    """3 correct and well formed (TOP_TIER), 2 correct, 1 wrong but well formed, 0 malformed and wrong."""
    return 2 * int(score(task, text) > 0) + int(is_well_formed(text))


def verifier_ranks(task, texts: list[str], tie_break: str = "none") -> tuple[list[int], list[int]]:
    """(ranks, tiers) of one prompt's completions under the verifier and the tie rule."""
    tiers = [verifier_tier(task, t) for t in texts]
    if tie_break == "shorter":
        keys = [(tier, -len(t)) for tier, t in zip(tiers, texts)]
    elif tie_break == "none":
        keys = list(tiers)
    else:
        raise UserError(f"rm.tie_break: unknown rule {tie_break!r}; expected none or shorter")
    return ranks_from_scores(keys), tiers


def _ranked(record: dict, ranks: list[int], source: str, gold: list[int] | None) -> Ranked:
    return Ranked(record["id"], record.get("family", "unknown"), record.get("prompt_messages"),
                  [c["text"] if isinstance(c, dict) else c for c in record["completions"]], ranks, source, gold,
                  record.get("reference"), {"answer": record.get("answer")})


def verifier_ranker(rollouts: list[dict], tie_break: str = "none") -> list[Ranked]:
    out = []
    for record in rollouts:
        if record.get("answer") is None:
            continue  # nothing to check against
        texts = [c["text"] for c in record["completions"]]
        ranks, tiers = verifier_ranks(_task(record), texts, tie_break)
        out.append(_ranked(record, ranks, "verifier", tiers))
    return out


def gold_tiers(record: dict) -> list[int] | None:
    if record.get("answer") is None or not record.get("prompt_messages"):
        return None
    task = _task(record)
    return [verifier_tier(task, c["text"] if isinstance(c, dict) else c) for c in record["completions"]]


@torch.no_grad()
def judge_scores(judge_dir: str, prompts: list[list[dict]], responses: list[str], device: str = "cpu",
                 batch_size: int = 16) -> list[float]:
    """logit("Yes") - logit("No") of a chat model asked whether each response is correct and well formatted."""
    try:
        tok = AutoTokenizer.from_pretrained(judge_dir)
        model = AutoModelForCausalLM.from_pretrained(judge_dir).to(device).eval()
    except OSError as exc:
        raise UserError(f"rm.judge_model: cannot load '{judge_dir}' as an HF chat model ({exc})") from None
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    texts = []
    for messages, response in zip(prompts, responses):
        question = "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")
        chat = [{"role": "user", "content": JUDGE_QUESTION.format(prompt=question, response=response)}]
        if tok.chat_template:
            texts.append(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        else:
            texts.append(chat[0]["content"] + "\n")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)       # (B, T) left-padded
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)   # (B, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]  # (B, V)
        scores += (logits[:, yes] - logits[:, no]).float().tolist()
    return scores


def judge_ranker(rollouts: list[dict], judge_dir: str, device: str = "cpu") -> list[Ranked]:
    flat = [(r, c["text"]) for r in rollouts for c in r["completions"]]
    scores = judge_scores(judge_dir, [r["prompt_messages"] for r, _ in flat], [t for _, t in flat], device)
    out, pos = [], 0
    for record in rollouts:
        k = len(record["completions"])
        out.append(_ranked(record, ranks_from_scores([round(s, 4) for s in scores[pos:pos + k]]), "judge",
                           gold_tiers(record)))
        pos += k
    return out


def human_ranker(rankings_file: str | Path, rollouts: list[dict]) -> list[Ranked]:
    """Rankings from the ranking page's log (self-contained: each record carries its texts)."""
    if not Path(rankings_file).is_file():
        raise UserError(f"rm.rankings_file: '{rankings_file}' does not exist (write it with `lifecycle rank`)")
    by_id = {r["id"]: r for r in rollouts}
    out = []
    for rec in read_rankings(rankings_file):
        base = by_id.get(rec["prompt_id"], {})
        record = {**base, "id": rec["prompt_id"], "family": rec.get("family") or base.get("family", "unknown"),
                  "prompt_messages": rec.get("prompt_messages") or base.get("prompt_messages"),
                  "completions": rec["completions"]}
        ranks = rec.get("ranks") or ranks_from_order(rec["order"])  # older logs: no ties, order only
        out.append(_ranked(record, ranks, "human", gold_tiers(record)))
    return out


def collect_rankings(cfg, rollouts: list[dict], device: str = "cpu", log=print) -> list[Ranked]:
    """Every ranked example the recipe's `rm.rankers` produce, concatenated."""
    out: list[Ranked] = []
    for source in cfg.rankers:
        if source == "verifier":
            part = verifier_ranker(rollouts, cfg.tie_break)
        elif source == "judge":
            if not cfg.judge_model:
                raise UserError("rm.judge_model: the judge ranker needs an HF chat model dir or hub id")
            part = judge_ranker(rollouts, cfg.judge_model, device)
        elif source == "human":
            if not cfg.rankings_file:
                raise UserError("rm.rankings_file: the human ranker needs the log written by `lifecycle rank`")
            part = human_ranker(cfg.rankings_file, rollouts)
        else:
            raise UserError(f"rm.rankers: unknown ranker {source!r}; expected verifier, judge or human")
        log(f"rankings: {len(part)} prompts from {source}, {sum(len(ranking_pairs(r.ranks)) for r in part)} pairs")
        out += part
    return out


def load_pairs(spec: str, limit: int) -> list[Ranked]:
    """A chosen/rejected dataset (hub id `id[:config][@split]`, default split train, or a local .jsonl/.json/.parquet)
    as K=2 rankings.

    Rows: {"chosen": [messages], "rejected": [messages]} (UltraFeedback-binarized style: the last turn is
    the answer), {"prompt", "chosen", "rejected"} strings, or {"chosen", "rejected"} whole texts (HH-RLHF)."""
    path = Path(spec)
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if path.exists() and kind is None:
        raise UserError(f"rm.pairs_datasets: '{spec}' must be .jsonl, .json or .parquet")
    hub_id, config, split = parse_hub_spec(spec)  # a hub id may name its config and split: id[:config][@split]
    if path.exists() and kind == "json":  # datasets would fail on bad bytes only when a row is read
        for _ in read_lines(path, "pairs dataset"):
            pass
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train") if path.exists() \
            else datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # datasets raises many types; the user needs the one line
        raise UserError(f"rm.pairs_datasets: cannot load '{spec}' ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not {"chosen", "rejected"} <= set(ds.column_names):
        raise UserError(f"rm.pairs_datasets: '{spec}' needs 'chosen' and 'rejected' columns, has {ds.column_names}")
    name = path.stem if path.exists() else spec
    out = []
    for i, row in enumerate(ds.select(range(min(limit, len(ds))))):
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, list):
            messages, texts = chosen[:-1], [chosen[-1]["content"] + END, rejected[-1]["content"] + END]
        elif row.get("prompt"):
            messages, texts = [{"role": "user", "content": row["prompt"]}], [chosen + END, rejected + END]
        else:
            messages, texts = None, [chosen, rejected]
        out.append(Ranked(f"{name}:{i}", f"pairs:{name}", messages, texts, [0, 1], f"pairs:{name}"))
    return out
