"""The report card's knowledge section: per stage, what it answers, refuses and invents about the corpus's facts.

Reads the `eval/knowledge/*` metrics of every stage that asked the held-out fact questions
(stages/eval/knowledge.py) and their rows in `<stage>/knowledge_eval.jsonl`. When the run also holds a
stage trained to answer every question (`knowledge.refusals: none`), each other stage's line says how
many of the known questions that stage answered right it still answers right.
"""
from __future__ import annotations

import json
from pathlib import Path

PREFIX = "eval/knowledge/"
COLUMNS = [("acc", "right, all"), ("acc_known", "right on known"), ("false_refusal_known", "refused on known"),
           ("refusal_unknown", "refused on unknown"), ("hallucination_unknown", "invented on unknown")]


def knowledge_stages(stages: dict) -> dict[str, dict[str, float]]:
    """{stage: {rate: value}} for the stages that ran the knowledge eval."""
    out = {}
    for name, rec in stages.items():
        rates = {k[len(PREFIX):]: v for k, v in rec.metrics.items() if k.startswith(PREFIX)}
        if rates:
            out[name] = rates
    return out


def _rows(run_dir: Path, stage: str) -> list[dict]:
    path = run_dir / stage / "knowledge_eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def answers_kept(rows: list[dict], before: list[dict]) -> float:
    """Of the known questions `before` answered right from memory, the share `rows` still answers right."""
    right = {r["key"] for r in before if r["mode"] == "memory" and r["label"] == "known" and r["outcome"] == "right"}
    kept = {r["key"] for r in rows if r["mode"] == "memory" and r["outcome"] == "right" and r["key"] in right}
    return len(kept) / len(right) if right else float("nan")


def _answers_all(record) -> bool:
    config = record.manifest.get("config") or {}
    section = config.get("sft") or {}
    return (section.get("knowledge") or {}).get("refusals") == "none"


def control_stage(stages: dict) -> str | None:
    """The first stage that ran the knowledge eval after training to answer every question, if any."""
    return next((n for n in knowledge_stages(stages) if _answers_all(stages[n])), None)


def table(run_dir: Path, stages: dict) -> list[list]:
    """One row per stage and mode (from memory / with search): the COLUMNS rates, and answers kept."""
    rates = knowledge_stages(stages)
    control = control_stage(stages)
    before = _rows(run_dir, control) if control else []
    out = []
    for name, r in rates.items():
        kept = answers_kept(_rows(run_dir, name), before) if control and name != control else None
        out.append([name, "memory", int(r.get("n_known", 0)), int(r.get("n_unknown", 0))]
                   + [r.get(key) for key, _ in COLUMNS] + [kept])
        if "acc_search" in r:
            out.append([name, "search", "", ""] + [r.get(f"{key}_search") for key, _ in COLUMNS] + [None])
    return out


NOTE = ("Held-out questions about the corpus's made-up people, labelled by a probe of the start model "
        "(known: its cloze samples state the fact; unknown: none do). `invented on unknown` is a confident "
        "wrong answer; `search` offers the search tool.")


def header(stages: dict) -> list[str]:
    control = control_stage(stages)
    return (["stage", "mode", "known", "unknown"] + [title for _, title in COLUMNS]
            + [f"known answers kept vs {control}" if control else "known answers kept"])
