"""SFT examples: built-in task conversations and conversation datasets, rendered to (input_ids, labels)
with the loss on the assistant's tokens only, and best-fit packing into max_length rows.
"""
from __future__ import annotations

import random

from stages.data.chat import IGNORE, render_training
from stages.data.conversations import SkipReport, load_conversations
from stages.data.tasks import FAMILIES
from stages.data.tasks.sources import load_tasks, sft_train_count, source_of


def train_families(cfg) -> list[str]:
    """The task sources a stage section trains on: its `tasks`, else its built-in families ([] = all six).
    Names were checked when the recipe loaded."""
    return list(cfg.tasks) if getattr(cfg, "tasks", None) is not None else list(cfg.families) or list(FAMILIES)


def builtin_conversations(cfg, seed: int, families: list[str]) -> list[tuple[str, list[dict]]]:
    """The task sources' demonstrations (`families`: specs or built-in family names), shuffled; a multi_turn_share
    of them continue with the next task as a second user turn (when that one has no system prompt of its own),
    so the model also sees multi-turn chats."""
    items = []
    for spec in families:
        n = sft_train_count(cfg, spec)
        tasks = load_tasks(spec, n, seed, "train") if n > 0 else []
        source = source_of(spec)
        items += [(f"{source.kind}:{source.label}:{i}", t.messages) for i, t in enumerate(tasks)]
    rng = random.Random(f"{seed}:sft:builtin")
    rng.shuffle(items)
    out, i = [], 0
    while i < len(items):
        where, messages = items[i]
        i += 1
        if i < len(items) and items[i][1][0]["role"] != "system" and rng.random() < cfg.multi_turn_share:
            where, messages = f"{where}+{items[i][0]}", messages + items[i][1]
            i += 1
        out.append((where, messages))
    return out


def build_examples(cfg, tokenizer, seed: int, families: list[str], report: SkipReport,
                   extra: list[tuple[str, list[dict]]] = ()) -> list[tuple[list, list]]:
    """(input_ids, labels) for every usable conversation of every dataset, in dataset order, then `extra`'s."""
    conversations: list[tuple[str, list[dict]]] = []
    for spec in cfg.datasets:
        if spec in ("builtin", "tasks"):
            builtin = builtin_conversations(cfg, seed, families)
            conversations += builtin
            report.kept += len(builtin)
        else:
            conversations += load_conversations(spec, report, max_rows=cfg.dataset_max_rows)
    conversations += extra
    report.kept += len(extra)
    examples = []
    for where, messages in conversations:
        encoded = render_training(tokenizer, messages, cfg.max_length)
        if encoded is None:
            report.skip(where, f"over-long: more than sft.max_length={cfg.max_length} tokens")
            report.kept -= 1
            continue
        examples.append(encoded)
    return examples


def pack(examples: list[tuple[list, list]], max_length: int, pad_id: int) -> list[tuple[list, list, list]]:
    """Best-fit packing into rows of exactly max_length: (input_ids, labels, position_ids).

    Each conversation goes into the open row with the least room that still fits it (rows are found by
    their free space, so this is O(n * max_length)); padding fills what is left."""
    rows: list[list] = []                      # [ids, labels, positions]
    by_room: dict[int, list[int]] = {}         # free tokens -> rows with exactly that much room
    for ex_ids, ex_labels in examples:
        need = len(ex_ids)
        room = next((r for r in range(need, max_length + 1) if by_room.get(r)), None)
        if room is None:
            rows.append([[], [], []])
            index, room = len(rows) - 1, max_length
        else:
            index = by_room[room].pop()
        ids, labels, pos = rows[index]
        ids += ex_ids
        labels += ex_labels
        pos += range(need)
        by_room.setdefault(room - need, []).append(index)
    out = []
    for ids, labels, pos in rows:
        fill = max_length - len(ids)
        out.append((ids + [pad_id] * fill, labels + [IGNORE] * fill, pos + list(range(fill))))
    return out
