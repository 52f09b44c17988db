"""Load a YAML recipe: `extends:` chains, dotted CLI overrides, schema validation, one-line errors.

    recipe = load_recipe("recipes/tiny.yaml", ["pretrain.max_steps=50"])

Every failure raises UserError whose message names the file, the key path (with its line when the key
is in the file) and what was expected, e.g.
    recipes/x.yaml:12: sft.optim.lrr: unknown key — did you mean 'lr'?
"""
from __future__ import annotations

import copy
import difflib
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import BadValue, UserError
from pipeline.files import MAX_RECIPE_BYTES, read_text
from pipeline.schema import Recipe

MAX_EXTENDS = 16  # depth of an `extends:` chain
# A value quoted in an error stays short, however big the value (a 100,000-character name, a deep list).
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 6, 4, 2

_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "list": "a list", "dict": "a mapping", "tuple": "a list", "literal": "one of",
}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    raw = _load_with_extends(path, seen=())
    for item in overrides or []:
        _apply_override(raw, item)
    return validate(raw, path)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain YAML-able data (aliases such as `from` restored)."""
    return recipe.model_dump(mode="json", by_alias=True, exclude={"extends"})


class RecipeView:
    """The recipe as one stage sees it: the sections its fingerprint covers, plus the run-level settings
    that do not change its result (name, output_dir, tracking, distributed). Reading any other section
    raises, so a stage cannot come to depend on what its fingerprint leaves out."""

    RUN_LEVEL = ("name", "output_dir", "tracking", "distributed", "distributed_for")

    def __init__(self, recipe: Recipe, sections: tuple[str, ...], stage: str):
        self._recipe, self._sections, self._stage = recipe, tuple(sections), stage
        # a stage declared in `stages:` reads its own section under its kind's name (a "mid" sft stage: .sft)
        self._own_kind = next((s["kind"] for s in recipe.chain() if s["name"] == stage and s["fields"] is not None),
                              None)

    def __getattr__(self, name: str):
        if name == self._own_kind and name in self._sections:
            return self._recipe.section_of(self._stage)
        if name in self._sections or name in self.RUN_LEVEL:
            return getattr(self._recipe, name)
        raise AttributeError(f"stage '{self._stage}' reads recipe.{name}, which its fingerprint does not cover; "
                             f"add '{name}' to the stage's sections in pipeline/runner.py")


def validate(raw: dict, path: Path) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc.errors()[0], raw, path)) from None


# ------------------------------------------------------------------ YAML + extends
def _short_path(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 300 else f"{text[:150]}...{text[-50:]}"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte in it
        return False


def _read_yaml(path: Path) -> dict:
    if not _is_file(path):
        raise UserError(f"{_short_path(path)}: recipe file not found")
    text = read_text(path, "recipe", MAX_RECIPE_BYTES)
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date that does not exist: `seed: 2024-13-45`
        raise UserError(f"{path}: invalid YAML value: {exc}") from None
    if data is None:
        raise UserError(f"{path}: recipe is empty; expected a mapping with at least `name:`")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    return data


def _load_with_extends(path: Path, seen: tuple) -> dict:
    if not _is_file(path):
        raise UserError(f"{_short_path(path)}: recipe file not found")
    resolved = path.resolve()
    if len(seen) >= MAX_EXTENDS:
        raise UserError(f"{path}: `extends:` chain deeper than {MAX_EXTENDS} recipes")
    if resolved in seen:
        raise UserError(f"{path}: `extends:` forms a cycle ({' -> '.join(p.name for p in seen + (resolved,))})")
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UserError(f"{path}: extends: expected a relative path to a recipe file")
    base = _load_with_extends(path.parent / parent, seen + (resolved,))
    return deep_merge(base, {k: v for k, v in data.items() if k != "extends"})


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------ overrides
def _apply_override(raw: dict, item: str) -> None:
    """`sft.optim.lr=1e-4` sets raw['sft']['optim']['lr']; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{item}': expected KEY.PATH=VALUE, e.g. pretrain.max_steps=50")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError):
        parsed = value  # not YAML: the plain string (the schema then says what it expected)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise UserError(f"override '{item}': '{part}' is not a section")
        node = node[part]
    node[parts[-1]] = parsed


# ------------------------------------------------------------------ error messages
def _describe(err: dict, raw: dict, path: Path) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    line = _line_of(path, list(err["loc"]))
    where = f"{path}:{line}" if line else f"{path}"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = ""
        if parent is not None:
            fields = [f.alias or name for name, f in parent.model_fields.items()]
            close = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
            hint = f" — did you mean '{close[0]}'?" if close else f" — expected one of: {', '.join(sorted(fields))}"
        return f"{where}: {dotted}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: {dotted}: required key is missing"
    got = _SHORT.repr(err.get("input"))
    if kind == "value_error":  # our own validators (pipeline/schema.py) say what they expected
        error = err["ctx"]["error"]
        return f"{where}: {dotted}: {error}" + ("" if isinstance(error, BadValue) else f", got {got}")
    if kind == "literal_error":
        return f"{where}: {dotted}: expected {err['ctx']['expected']}, got {got}"
    expected = _expected(kind, err)
    return f"{where}: {dotted}: expected {expected}, got {got}"


def _expected(kind: str, err: dict) -> str:
    ctx = err.get("ctx") or {}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        return "a value " + bounds[kind].format(**{k: str(v) if isinstance(v, int) else f"{v:g}" for k, v in ctx.items()})
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "a mapping"
    if kind == "string_pattern_mismatch":
        return f"a string matching {ctx.get('pattern')}"
    if kind == "string_too_long":
        return f"a string of at most {ctx['max_length']:,} characters"
    if kind == "too_long":
        return f"at most {ctx['max_length']:,} items"
    if kind == "finite_number":
        return "a finite number"
    for word, text in _TYPE_WORDS.items():
        if kind.startswith(word):
            return text
    return err["msg"].lower()


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class that owns the keys at `loc` (None if loc leaves the schema)."""
    model: Any = Recipe
    for part in loc:
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(path: Path, loc: list) -> int | None:
    """1-based line of the deepest key (or list item, for an int) of `loc` present in the file (None if not in it)."""
    try:
        node = yaml.compose(path.read_text())
    except Exception:
        return None
    line = None
    for part in loc:
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line
