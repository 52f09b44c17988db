"""Fuzzing what users hand us: hundreds of mutated recipes and data files, each of them invalid.

Every case goes through the real CLI entry point in-process (`pipeline.cli.main`): recipes through
`lifecycle plan` (or overrides on it), data files through `lifecycle run R --stages tokenizer`, which
reads them before any stage starts. Each must exit 2 with exactly one line on stderr ("error: ..."),
no traceback, and nothing written under the recipe's output_dir or ./runs. The cases come from a
seeded generator (same cases every run); a failing case's id names its mutation.
"""
from __future__ import annotations

import io
import json
import random
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline import cli
from pipeline.schema import Recipe

SEED = 19
N_RECIPES = 180
N_DATA = 90
OUT = "OUT"  # stands for the case's output_dir until the case runs

BASE = {"name": "fuzz", "seed": 3, "output_dir": OUT, "tracking": {"wandb": False},
        "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "seq_len": 32},
        "tokenizer": {"vocab_size": 300}, "pretrain": {"max_steps": 2, "optim": {"lr": 1e-3}},
        "sft": {"max_steps": 2, "families": ["arithmetic"]}, "rm": {"num_prompts": 4, "k": 2},
        "rl": {"max_steps": 1}, "eval": {"max_prompts_per_family": 2}}
PROSE = "".join(f"Scene {i}. Enter a messenger with news of {i * 7 % 13} ships, and the king speaks.\n"
                for i in range(120))


# ---------------------------------------------------------------- the schema's fields
def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields(model: type[BaseModel] = Recipe, prefix: tuple = ()):
    """(key path, FieldInfo, section model or None) for every field of the recipe, nested sections too."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name,)
        section = _model_in(info.annotation)
        yield path, info, section
        if section is not None:
            yield from _fields(section, path)


FIELDS = list(_fields())
FIELD_INFO = {path: info for path, info, _ in FIELDS}
SECTIONS = [()] + [path for path, _, section in FIELDS if section is not None]
BOUNDED = [(path, info) for path, info, section in FIELDS if section is None
           and any(type(m).__name__ in ("Ge", "Gt", "Le", "Lt") for m in info.metadata)]
LITERALS = [path for path, info, section in FIELDS
            if any(typing.get_origin(a) is typing.Literal for a in (info.annotation, *typing.get_args(info.annotation)))]
SCALARS = [path for path, info, section in FIELDS if section is None]
FLOATS = [path for path, info in BOUNDED if float in (info.annotation, *typing.get_args(info.annotation))]


def _violation(info, rng: random.Random):
    """A number just or far outside one of the field's bounds."""
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in info.metadata
              if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}
    kind = rng.choice(sorted(bounds))
    edge = bounds[kind]
    far = rng.choice([1, 10**3, 10**12, 10**30])
    return {"Lt": edge, "Le": edge + far, "Gt": edge, "Ge": edge - far}[kind]


def _set(recipe: dict, path: tuple, value) -> dict:
    node = recipe
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return recipe


def _fresh() -> dict:
    return json.loads(json.dumps(BASE))


# ---------------------------------------------------------------- recipe mutations: (id, files, argv)
def _recipe_case(rng: random.Random) -> tuple[str, dict[str, bytes], list[str]]:
    kind = rng.choice(["bound", "bound", "override", "type", "unknown", "literal", "nan", "control", "utf8",
                       "name", "yaml", "size", "extends", "shape", "string", "path"])
    recipe, argv = _fresh(), ["plan", "r.yaml"]
    if kind in ("bound", "override"):
        path, info = rng.choice(BOUNDED)
        value = _violation(info, rng)
        if kind == "override":
            argv.append(f"{'.'.join(path)}={value}")
        else:
            _set(recipe, path, value)
        return f"{kind}:{'.'.join(path)}={value}", {"r.yaml": _dump(recipe)}, argv
    if kind == "type":
        path = rng.choice(SCALARS)
        info = FIELD_INFO[path]
        is_mapping = typing.get_origin(info.annotation) is dict or dict in map(typing.get_origin, typing.get_args(info.annotation))
        _set(recipe, path, [1, [2]] if is_mapping else {"oops": [1, 2]})
        return f"type:{'.'.join(path)}", {"r.yaml": _dump(recipe)}, argv
    if kind == "unknown":
        section = rng.choice(SECTIONS)
        key = "zz_" + "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12)))
        _set(recipe, section + (key,), rng.choice([1, "x", [1], {"a": 1}]))
        return f"unknown:{'.'.join(section + (key,))}", {"r.yaml": _dump(recipe)}, argv
    if kind == "literal":
        path = rng.choice(LITERALS)
        _set(recipe, path, rng.choice(["nope", "GRPO", "", "cosine-ish", 7]))
        return f"literal:{'.'.join(path)}", {"r.yaml": _dump(recipe)}, argv
    if kind == "nan":
        path = rng.choice(FLOATS)
        value = float(rng.choice(["nan", "inf", "-inf"]))
        return f"nan:{'.'.join(path)}={value}", {"r.yaml": _dump(_set(recipe, path, value))}, argv
    if kind in ("control", "utf8"):
        return _byte_case(kind, _dump(recipe), rng, "r.yaml", argv)
    if kind == "name":
        bad = rng.choice(["x" * rng.choice([101, 5_000, 100_000]), "a b", "a/b", "..", ".", "", "t\u00e9", "t\x01"])
        recipe["name"] = bad
        return f"name:{len(bad)}:{bad[:8]!r}", {"r.yaml": _dump(recipe)}, argv
    if kind == "yaml":
        lines = _dump(recipe).split(b"\n")
        at = rng.randrange(len(lines))
        junk = rng.choice([b"zz: [unclosed", b"zz: {a: 1", b"\tzz: tab", b"- a list item", b'zz: "unclosed', b"zz: *nowhere"])
        return f"yaml:{junk[:12]!r}@{at}", {"r.yaml": b"\n".join(lines[:at] + [junk] + lines[at:])}, argv
    if kind == "size":
        return "size:1.1MiB", {"r.yaml": _dump(recipe) + b"# " + b"x" * (1_100_000) + b"\n"}, argv
    if kind == "extends":
        which = rng.choice(["missing", "cycle", "type"])
        files = {"r.yaml": _dump({**recipe, "extends": {"missing": "gone.yaml", "cycle": "r.yaml", "type": [1]}[which]})}
        return f"extends:{which}", files, argv
    if kind == "shape":
        body = rng.choice([b"- a\n- b\n", b"just a string\n", b"42\n", b"", b"# only a comment\n", b"[" * 3000 + b"]" * 3000])
        return f"shape:{body[:10]!r}", {"r.yaml": body}, argv
    if kind == "string":
        path = rng.choice([("output_dir",), ("data", "paths"), ("sft", "datasets"), ("tokenizer", "from"),
                           ("tracking", "project"), ("data", "text_field"), ("sft", "system_prompt")])
        bad = rng.choice(["x\x00y", "x\x07y", "x" * (100_001 if path[-1] == "system_prompt" else 4_097)])
        value = [bad] if path[-1] in ("paths", "datasets") else bad
        return f"string:{'.'.join(path)}:{len(bad)}", {"r.yaml": _dump(_set(recipe, path, value))}, argv
    recipe_arg = rng.choice(["missing.yaml", "x" * 100_000 + ".yaml", ".", "r\x00.yaml"])
    return f"path:{recipe_arg[:12]!r}", {"r.yaml": _dump(recipe)}, ["plan", recipe_arg]


def _byte_case(kind: str, data: bytes, rng: random.Random, name: str, argv: list[str]):
    at = rng.randrange(len(data) + 1)
    if kind == "control":
        junk = bytes([rng.choice([*range(9), *range(14, 32)]) for _ in range(rng.randint(1, 3))])
    else:
        junk = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80", "\u00e9t\u00e9".encode("latin-1"), b"\xfe\xff"])
    return f"{kind}:{junk!r}@{at}", {name: data[:at] + junk + data[at:]}, argv


def _dump(recipe: dict) -> bytes:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).encode()


# ---------------------------------------------------------------- data-file mutations
def _data_case(rng: random.Random) -> tuple[str, dict[str, bytes], list[str]]:
    kind = rng.choice(["txt-control", "txt-utf8", "txt-binary", "txt-empty", "txt-encoding", "jsonl-line",
                       "jsonl-field", "jsonl-utf8", "parquet-garbage", "parquet-column", "path"])
    recipe = _fresh()
    name, files = "corpus.txt", {}
    if kind in ("txt-control", "txt-utf8"):
        case_id, files, _ = _byte_case(kind[4:], PROSE.encode(), rng, name, [])
        case_id = "txt-" + case_id
    elif kind == "txt-binary":
        size = rng.randint(1, 5000)
        files[name] = bytes(rng.randrange(256) for _ in range(size)) + b"\xff"
        case_id = f"txt-binary:{size}"
    elif kind == "txt-empty":
        files[name] = rng.choice([b"", b"\n\n  \n", b"hi", b"\t"])
        case_id = f"txt-empty:{files[name]!r}"
    elif kind == "txt-encoding":
        codec = rng.choice(["latin-1", "utf-16", "cp1252", "utf-32"])
        files[name] = ("Caf\u00e9 " + PROSE).encode(codec)
        case_id = f"txt-encoding:{codec}"
    elif kind.startswith("jsonl"):
        name = "corpus.jsonl"
        rows = [json.dumps({"text": line}) for line in PROSE.splitlines()]
        at = rng.randrange(len(rows))
        bad = {"jsonl-line": rng.choice(["{oops", "[1, 2]", '{"text": "unterminated', '"just a string"', "[" * 50_000]),
               "jsonl-field": rng.choice(['{"body": "x"}', '{"text": 5}', '{"text": ["a"]}', '{"text": {"a": 1}}']),
               "jsonl-utf8": '{"text": "caf\udce9"}'}[kind]
        rows[at] = bad
        files[name] = "\n".join(rows).encode("utf-8", "surrogateescape") + b"\n"
        case_id = f"{kind}:{bad[:12]!r}@{at + 1}"
    elif kind == "parquet-garbage":
        name = "corpus.parquet"
        files[name] = rng.choice([b"", b"PAR1", b"PAR1" + bytes(rng.randrange(256) for _ in range(300)) + b"PAR1",
                                  _parquet({"text": ["a", "b"]})[:-rng.randint(1, 40)]])
        case_id = f"parquet-garbage:{len(files[name])}"
    elif kind == "parquet-column":
        name = "corpus.parquet"
        files[name] = rng.choice([_parquet({"body": ["a"]}), _parquet({"text": [1, 2]}), _parquet({"text": [1.5]})])
        case_id = "parquet-column"
    else:
        name = rng.choice(["nothing-*.txt", "corpus.csv", "missing.txt", "dir.txt"])
        files = {"corpus.csv": b"a,b\n"} if name == "corpus.csv" else {"dir.txt/inner.txt": b"x"} if name == "dir.txt" else {}
        case_id = f"path:{name}"
    recipe["data"] = {"source": "local", "paths": [name], "num_workers": 1}
    files["r.yaml"] = _dump(recipe)
    return f"data-{case_id}", files, ["run", "r.yaml", "--stages", "tokenizer"]


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _cases() -> list[tuple[str, dict[str, bytes], list[str]]]:
    rng = random.Random(SEED)
    cases = [_recipe_case(rng) for _ in range(N_RECIPES)] + [_data_case(rng) for _ in range(N_DATA)]
    return [(f"{i:03d}-{case_id}"[:90], files, argv) for i, (case_id, files, argv) in enumerate(cases)]


CASES = _cases()


def test_the_fuzz_covers_at_least_200_cases_of_every_kind():
    assert len(CASES) >= 200
    kinds = {case_id.split("-", 1)[1].split(":")[0] for case_id, _, _ in CASES}
    assert {"bound", "override", "type", "control", "utf8", "name", "yaml", "data-txt-control", "data-txt-utf8",
            "data-jsonl-line", "data-parquet-garbage"} <= kinds


@pytest.mark.parametrize("case_id, files, argv", CASES, ids=[c[0] for c in CASES])
def test_mutated_input_is_one_clean_line_and_writes_nothing(case_id, files, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)  # leave the session's libraries as they are
    out = tmp_path / "out"
    for name, data in files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(data.replace(OUT.encode(), str(out).encode()) if name == "r.yaml" else data)
    rc = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, (rc, captured.out[-500:], captured.err[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    assert len(lines[0]) < 1000  # one readable line, however big the bad value
    assert not out.exists() and not (tmp_path / "runs").exists()
