"""reasoning-gym datasets as task sources: `gym:<dataset>[?param=value&...]`.

    from stages.data.tasks.gym import gym_tasks
    tasks = gym_tasks(parse_source("gym:basic_arithmetic?max_terms=2"), n=200, seed=1337, split="test")

Items come from `reasoning_gym.create_dataset(name, seed=..., size=..., **params)`: the question is the prompt,
`answer` the reference, and the dataset's own `score_answer` the verifier (verify.py: full credit counts as
right). The worked solution is `metadata["answer_cot"]` where the dataset has one (gsm_symbolic), with its
`#### N` line turned into our "Answer: N"; otherwise the demonstration is the answer line alone.
Splits as for the built-in families: an item is "test" iff sha256("gym:<name>", question) falls in the bottom
20%; each (seed, label, split) reads its own gym seed, so draws are deterministic and the splits disjoint.
With `size=N` (and `seed=S`, default 0) the source is instead a fixed pool: items 0..N-1 of one gym seed, split
by the same hash, drawn like a file (`gym_pool`).
Items whose answer spans several lines are skipped (the "Answer:" line cannot hold them); a dataset that yields
none is a UserError. Each task's meta holds the item (JSON-normalised), so a rollout record can be re-scored.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from pipeline.errors import UserError
from stages.data.tasks import ANSWER_PREFIX, Task, split_of
from stages.data.tasks.spec import GYM_POOL, Source


def _seed(seed: int, label: str, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}:{split}".encode()).digest()[:4], "big")


def worked_solution(metadata: dict) -> str:
    """The dataset's worked solution without its final '#### N' line ('' when it has none)."""
    cot = metadata.get("answer_cot") if isinstance(metadata, dict) else None
    if not isinstance(cot, str):
        return ""
    return cot.rsplit("####", 1)[0].strip() if "####" in cot else cot.strip()


def item_task(source: Source, item: dict) -> Task | None:
    """One gym item as a Task (None when its answer does not fit on the answer line)."""
    entry = json.loads(json.dumps(item, default=str))  # what a rollouts file will hold: score the same thing
    answer = str(entry["answer"]).strip()
    if not answer or "\n" in answer:
        return None
    working = worked_solution(entry.get("metadata") or {})
    content = f"{working}\n{ANSWER_PREFIX} {answer}" if working else f"{ANSWER_PREFIX} {answer}"
    params = {k: v for k, v in source.params if k not in GYM_POOL}
    meta = {"verifier": "gym", "gym": source.name, "gym_params": params, "entry": entry}
    return Task(source.label, [{"role": "user", "content": entry["question"].strip()},
                               {"role": "assistant", "content": content}], answer, meta)


def gym_tasks(source: Source, n: int, seed: int, split: str) -> list[Task]:
    """n tasks of the split, deterministic in (source, n, seed, split); the test split avoids repeats while
    the dataset's question space allows."""
    import reasoning_gym
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = 50 * n + 1000
    params = {k: v for k, v in source.params if k not in GYM_POOL}
    dataset = reasoning_gym.create_dataset(source.name, seed=_seed(seed, source.label, split), size=size, **params)
    tasks: list[Task] = []
    seen: set[str] = set()
    for idx in range(size):
        if len(tasks) >= n:
            break
        task = item_task(source, dataset[idx])
        if task is None:
            continue
        question = task.prompt_messages()[-1]["content"]
        if split_of(f"gym:{source.name}", question) != split:
            continue
        if split == "test" and question in seen and idx < size - 2 * n:
            continue
        seen.add(question)
        tasks.append(task)
    if n > 0 and not tasks:
        raise UserError(f"{source.spec}: no usable {split} items (answers on one line) in {size} drawn")
    return tasks


@lru_cache(maxsize=32)
def gym_pool(source: Source, split: str) -> tuple[Task, ...]:
    """The `split` side of a fixed pool (`size=N`, `seed=S`): items 0..N-1, hash-split, in item order."""
    import reasoning_gym
    pool = dict(source.params)
    params = {k: v for k, v in pool.items() if k not in GYM_POOL}
    dataset = reasoning_gym.create_dataset(source.name, seed=pool.get("seed", 0), size=pool["size"], **params)
    tasks = (item_task(source, dataset[i]) for i in range(pool["size"]))
    return tuple(t for t in tasks if t is not None
                 and split_of(f"gym:{source.name}", t.prompt_messages()[-1]["content"]) == split)
