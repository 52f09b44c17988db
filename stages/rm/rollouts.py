"""The rollouts file: K sampled completions per prompt from a policy, for ranking and the reward model.

    lifecycle rollouts recipes/tiny.yaml          # -> runs/tiny/rollouts.jsonl (also the first part of `make rm`)

One JSON line per prompt: {"id", "family", "prompt_messages", "answer", "meta", "reference" (the task's own
answer, used to centre the reward model), "completions": [{"text", "finished", "n_tokens", "n_tool_tokens"}],
"sampling": {k, temperature, top_p, max_new_tokens, seed}, "policy": fingerprint, "tokenizer": vocab hash}.
Prompts are generated in fixed chunks, each with its own seed, and appended (fsynced) chunk by chunk, so a
killed run resumes where it stopped and produces the same file. A file from another policy or other
sampling settings is moved aside (rollouts.<old policy>.jsonl), never mixed in.
Sampling is batched with a KV cache and the calculator tool live (stages.lm.generation.generate).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import read_jsonl
from stages.data.chat import render_prompt
from stages.data.special_tokens import END
from stages.data.tasks import FAMILIES
from stages.data.tasks.sources import interleave, load_tasks, stage_sources
from stages.lm.generation import generate
from stages.lm.model import load_causal_lm

CHUNK_PROMPTS = 16  # prompts per generate() call and per resume unit


# ---------------------------------------------------------------- identities
def policy_fingerprint(model_dir: str | Path) -> str:
    """The policy's identity: the producing stage's manifest fingerprint + run id, else the files' names, sizes,
    mtimes and first MiB (cheap for big models; a copied dir counts as new, which only costs a resample)."""
    model_dir = Path(model_dir)
    manifest = model_dir / "manifest.json"
    h = hashlib.sha256()
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        h.update(f"{m.get('fingerprint')}:{m.get('run_id')}".encode())
    elif model_dir.is_dir():
        for f in sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    else:
        h.update(str(model_dir).encode())  # a hub id
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def prompt_id(index: int, family: str, messages: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps([family, messages]).encode()).hexdigest()[:8]
    return f"{index:05d}-{digest}"


# ---------------------------------------------------------------- prompts
def rollout_tasks(families: list[str], num_prompts: int, seed: int) -> list:
    """num_prompts training-split tasks, sources interleaved (so any prefix or hash split mixes them).

    `families`: task source specs or built-in family names ([] = all six). Drawn with seed+1, so they are
    mostly other prompts than SFT's (which uses the recipe seed). A finite source that runs out leaves the
    others to fill in."""
    families = list(families) or list(FAMILIES)
    per = -(-num_prompts // len(families))
    return interleave([load_tasks(f, per, seed + 1, "train") for f in families], num_prompts)


# ---------------------------------------------------------------- the rollouts file
def read_rollouts(path: str | Path) -> list[dict]:
    """Complete records of a rollouts file (a partial last line from a kill is ignored); bad bytes, a
    broken line elsewhere or a record without id and completions is a UserError naming file:line."""
    path = Path(path)
    if not path.is_file():
        return []
    return [check_rollout(record, f"{path}:{line_no}") for line_no, record in read_jsonl(path, "rollout")]


def check_rollout(record: dict, where: str) -> dict:
    """`record` if it is a rollout: an 'id' and a list of completions, each with its 'text'."""
    completions = record.get("completions")
    if (not isinstance(record.get("id"), str) or not isinstance(completions, list)
            or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in completions)):
        raise UserError(f"{where}: expected a rollout record: an 'id' string and 'completions', "
                        "a list of objects with a 'text' string")
    return record


def _reusable(path: Path, policy: str, sampling: dict, expected_ids: list[str]) -> list[dict]:
    """The records of `path` this run can keep: same policy and sampling, the same prompts in order, whole
    chunks only (a kill mid-chunk leaves some of its lines; the chunk is redone, not duplicated)."""
    done = read_rollouts(path)
    if done and any(r.get("policy") != policy or r.get("sampling") != sampling for r in done):
        path.rename(path.with_name(f"{path.stem}.{done[0].get('policy', 'old')}.jsonl"))
        return []
    keep = 0
    while keep < min(len(done), len(expected_ids)) and done[keep].get("id") == expected_ids[keep]:
        keep += 1
    if keep < len(expected_ids):
        keep -= keep % CHUNK_PROMPTS
    if keep != len(done) or (path.is_file() and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done[:keep]))
        tmp.replace(path)
    return done[:keep]


def make_rollouts(model, tokenizer, tasks: list, path: str | Path, *, k: int, temperature: float, top_p: float,
                  max_new_tokens: int, seed: int, policy: str, log=print) -> list[dict]:
    """Sample k completions for each task's prompt into `path` (resuming a partial file); all records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sampling = {"k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
    ids = [prompt_id(i, t.family, t.prompt_messages()) for i, t in enumerate(tasks)]
    records = _reusable(path, policy, sampling, ids)
    vocab_hash = tokenizer_hash(tokenizer)
    n_chunks = -(-len(tasks) // CHUNK_PROMPTS)
    first = n_chunks if len(records) >= len(tasks) else len(records) // CHUNK_PROMPTS
    for c in range(first, n_chunks):
        chunk = list(enumerate(tasks))[c * CHUNK_PROMPTS:(c + 1) * CHUNK_PROMPTS]
        prompts = [render_prompt(tokenizer, t.prompt_messages()) for _, t in chunk]
        groups = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, num_samples=k, use_tools=True, seed=seed * 1000 + c,
                          batch_size=CHUNK_PROMPTS * k)
        lines = []
        for (i, task), group in zip(chunk, groups):
            messages = task.prompt_messages()
            lines.append({"id": ids[i], "family": task.family,
                          "prompt_messages": messages, "answer": task.answer, "meta": task.meta,
                          "reference": task.messages[-1]["content"] + END,
                          "completions": [{"text": g.text, "finished": g.finished, "n_tokens": len(g.completion_ids),
                                           "n_tool_tokens": sum(g.tool_mask)} for g in group],
                          "sampling": sampling, "policy": policy, "tokenizer": vocab_hash})
        with open(path, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in lines))
            fh.flush()
            os.fsync(fh.fileno())
        records += lines
        log(f"rollouts: {len(records)}/{len(tasks)} prompts x {k} completions -> {path}")
    return records


def rollouts_for_recipe(recipe, model_dir: str | Path, path: str | Path, device: str, log=print) -> list[dict]:
    """The recipe's rollouts (its `rm` section and task sources) from the policy in model_dir (generated or resumed)."""
    return sample_rollouts(recipe.rm, recipe.seed, model_dir, path, device, log, stage_sources(recipe, "rm"))


def sample_rollouts(cfg, seed: int, model_dir: str | Path, path: str | Path, device: str, log=print,
                    sources: list[str] | None = None) -> list[dict]:
    """Rollouts as a section asks for them (num_prompts, families, k, temperature, top_p, max_new_tokens:
    the rm and dpo sections both have these) from the policy in model_dir, generated or resumed; `sources`
    (task source specs) replace the section's families."""
    model, tokenizer = load_causal_lm(model_dir, device=device)
    tasks = rollout_tasks(cfg.families if sources is None else sources, cfg.num_prompts, seed)
    records = make_rollouts(model, tokenizer, tasks, path, k=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=seed, policy=policy_fingerprint(model_dir),
                            log=log)
    del model
    return records
