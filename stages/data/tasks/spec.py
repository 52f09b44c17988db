"""Task source specs: one line names a set of tasks, the same way in every stage's `tasks:` list.

    from stages.data.tasks.spec import parse_source
    parse_source("gym:basic_arithmetic?min_terms=2&max_terms=2")   # Source(kind="gym", name=..., params=...)
    parse_source("gsm8k:openai/gsm8k")                             # hub: train split -> train, test -> test
    parse_source("gsm8k:data/qa.jsonl?label=myqa")                 # local file, hash split 80/20

Grammar: `KIND:WHERE[?key=value&key=value]`.
- KIND `builtin`: WHERE is a built-in family (stages/data/tasks: arithmetic, spelling, ...).
- KIND `gym`: WHERE is a reasoning-gym dataset; the query holds its config fields (values read as YAML:
  `min_terms=2`, `operators=[+,-]`). Without `size` every draw generates fresh items (seeded per stage and
  split); `size=N` (optionally `seed=S`, default 0) makes the source a fixed pool of N items, split 80/20.
- KIND `gsm8k`, `math`, `qa`, `arc`, `mmlu`, `hellaswag` name a row layout (stages/data/tasks/qa.py); WHERE is
  a local .jsonl/.json/.parquet file or a hub id `owner/name[:config][@split]`.
The query key `label` names the source in metrics (`eval/acc/<label>`); default: the family, the gym dataset,
the file's stem, or the hub id's name (plus its config). Parsing checks names only (no file or network
access): unknown kinds, families, gym datasets and gym parameters are errors with a close-match hint.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from pipeline.errors import BadValue
from stages.data.tasks import FAMILIES

DATASET_KINDS = ("gsm8k", "math", "qa", "arc", "mmlu", "hellaswag")
KINDS = ("builtin", "gym") + DATASET_KINDS
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
GYM_POOL = ("seed", "size")   # a fixed pool of `size` items from `seed`, instead of fresh items per draw
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Source:
    spec: str                  # the line as written
    kind: str                  # one of KINDS
    name: str                  # family, gym dataset, hub id or file path
    config: str | None = None  # hub config
    split: str | None = None   # hub split named with @: the pool that is hash-split 80/20
    params: tuple = ()         # gym config fields, ((key, value), ...)
    label: str = ""            # metric name of the source

    @property
    def local(self) -> bool:
        return self.kind in DATASET_KINDS and Path(self.name).suffix in LOCAL_SUFFIXES


def hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" — did you mean '{close[0]}'?" if close else ""


def _query(text: str, spec: str) -> dict:
    params = {}
    for part in filter(None, text.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise BadValue(f"'{spec}': expected key=value after '?', got '{part}'")
        try:
            params[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            params[key] = value
    return params


def _default_label(kind: str, name: str, config: str | None) -> str:
    if kind in ("builtin", "gym"):
        return name
    path = Path(name)
    if path.suffix in LOCAL_SUFFIXES:
        return path.stem
    tail = name.rsplit("/", 1)[-1] + (f"_{config}" if config and config not in ("main", "all", "default") else "")
    return re.sub(r"[^a-z0-9_.]", "_", tail.lower())


@lru_cache(maxsize=None)
def parse_source(spec: str) -> Source:
    """The Source a spec line names; ValueError with a one-line message when it names nothing we know.

    A bare built-in family name ("arithmetic") is read as builtin:arithmetic (the `families:` shorthand)."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadValue(f"expected a task source KIND:NAME (kinds: {', '.join(KINDS)}), got {spec!r}")
    if spec in FAMILIES:
        return Source(spec, "builtin", spec, label=spec)
    head, _, query = spec.partition("?")
    kind, sep, where = head.partition(":")
    if not sep:
        raise BadValue(f"'{spec}': expected KIND:NAME with KIND one of {', '.join(KINDS)}{hint(kind, FAMILIES)}")
    if kind not in KINDS:
        raise BadValue(f"'{spec}': unknown task kind '{kind}'{hint(kind, KINDS)} (expected one of {', '.join(KINDS)})")
    if not where:
        raise BadValue(f"'{spec}': nothing after '{kind}:'; expected a name")
    params = _query(query, spec)
    label = str(params.pop("label", "")) or None
    if label is not None and not _LABEL.match(label):
        raise BadValue(f"'{spec}': label '{label}' must match [A-Za-z0-9_.-]+")
    config = split = None
    if kind == "builtin":
        if where not in FAMILIES:
            raise BadValue(f"'{spec}': unknown built-in family '{where}'{hint(where, FAMILIES)} "
                             f"(expected one of {', '.join(FAMILIES)})")
    elif kind == "gym":
        check_gym(where, params, spec)
    elif Path(where).suffix not in LOCAL_SUFFIXES:
        where, _, split = where.partition("@")
        where, _, config = where.partition(":")
        if where.count("/") != 1 or not all(where.split("/")):
            raise BadValue(f"'{spec}': '{where}' is neither a local .jsonl/.json/.parquet file nor a hub id owner/name")
    if params and kind != "gym":
        raise BadValue(f"'{spec}': unknown option '{next(iter(params))}'; {kind} sources take only label=")
    return Source(spec, kind, where, config or None, split or None, tuple(sorted(params.items(), key=str)),
                  label or _default_label(kind, where, config or None))


def check_gym(name: str, params: dict, spec: str) -> None:
    """The dataset exists and its config accepts `params` (reasoning-gym's own validate())."""
    import dataclasses

    from reasoning_gym.factory import DATASETS
    if name not in DATASETS:
        raise BadValue(f"'{spec}': unknown gym dataset '{name}'{hint(name, DATASETS)}")
    config_cls = DATASETS[name][1]
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in GYM_POOL]
    if "seed" in params and "size" not in params:
        raise BadValue(f"'{spec}': seed= needs size= (a fixed pool of items); without size each stage and split "
                         "draws fresh items from its own seed")
    for key in GYM_POOL:
        if key in params and (not isinstance(params[key], int) or isinstance(params[key], bool) or params[key] < 0
                              or (key == "size" and params[key] < 1)):
            raise BadValue(f"'{spec}': {key}= expected a whole number{' >= 1' if key == 'size' else ''}, "
                             f"got {params[key]!r}")
    for key in params:
        if key in GYM_POOL:
            continue
        if key not in fields:
            raise BadValue(f"'{spec}': gym dataset '{name}' has no parameter '{key}'{hint(key, fields)} "
                             f"(it has: {', '.join(fields)})")
    try:
        config = config_cls(**{k: v for k, v in params.items() if k not in GYM_POOL}, seed=0, size=1)
        if hasattr(config, "validate"):
            config.validate()
    except Exception as exc:  # reasoning-gym asserts; the user needs the reason in one line
        raise BadValue(f"'{spec}': bad parameters for gym dataset '{name}': "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def check_task_list(specs: list[str] | None, key: str) -> None:
    """A stage's task list: not empty, each spec parses, labels unique. ValueError names the problem."""
    if specs is None:
        return
    if not specs:
        raise BadValue(f"empty task set; name at least one source, e.g. builtin:arithmetic or gym:basic_arithmetic "
                         f"(or drop `{key}` for the built-in families)")
    seen: dict[str, str] = {}
    for spec in specs:
        label = parse_source(spec).label
        if label in seen:
            raise BadValue(f"'{seen[label]}' and '{spec}' are both labelled '{label}'; add ?label=NAME to one")
        seen[label] = spec
