"""The house rules of the source tree: no import cycles (between modules, and between rooms), small files,
and nothing but stage entry points at the top of stages/."""
from __future__ import annotations

import ast
from pathlib import Path

from pipeline.runner import KINDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "reward", "serve")
MAX_LINES = 400
# Leaf modules every room may use: they import nothing of ours but each other (errors, safe file reading,
# quiet third-party output), so they sit below every room.
FOUNDATION = ("pipeline.errors", "pipeline.files", "pipeline.logging_setup")


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere in the file (function bodies too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from pkg import mod` names a module, `from mod import f` does not
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def room(module: str) -> str:
    """The part of the house a module lives in: a subpackage, the top of a package, or a shared leaf."""
    parts = module.split(".")
    if module in FOUNDATION:
        return module
    if parts[0] == "pipeline":
        if parts[1:2] == ["commands"]:
            return "pipeline.commands"
        return "pipeline.cli" if module in ("pipeline.cli", "pipeline.__main__") else "pipeline"
    if parts[0] == "stages" and len(parts) > 2:
        return ".".join(parts[:2])
    if parts[0] == "stages" and len(parts) == 2 and (ROOT / "stages" / parts[1]).is_dir():
        return module
    return parts[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in source_files()}
    known = set(files)
    modules = {m: imports_of(p, known) - {m} for m, p in files.items()}
    rooms: dict[str, set[str]] = {}
    for m, deps in modules.items():
        rooms.setdefault(room(m), set()).update(room(d) for d in deps if room(d) != room(m))
    return modules, rooms


def test_no_import_cycle_between_modules():
    modules, _ = graphs()
    assert find_cycle(modules) is None, " -> ".join(find_cycle(modules))


def test_no_import_cycle_between_rooms():
    _, rooms = graphs()
    assert find_cycle(rooms) is None, " -> ".join(find_cycle(rooms))


def test_foundation_modules_import_only_each_other():
    modules, _ = graphs()
    for module in FOUNDATION:
        assert modules[module] <= set(FOUNDATION), (module, modules[module])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_over_the_line_cap():
    long = {str(p.relative_to(ROOT)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_top_of_stages_holds_exactly_the_stage_modules():
    entries = {k.entry.partition(":")[0] for k in KINDS.values()}
    top = {f"stages.{p.stem}" for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py"}
    assert top == entries


def test_pipeline_core_does_not_import_stages():
    """Orchestration knows stages by their entry strings; only the command handlers import them
    (and the schema, which checks names against the task registry and task source specs)."""
    modules, _ = graphs()
    registry = {"stages.data.tasks", "stages.data.tasks.spec"}
    allowed = {"pipeline.schema": registry, "pipeline.recipe_values": registry}
    for module, deps in modules.items():
        if room(module) == "pipeline":
            reached = {d for d in deps if d.split(".")[0] in ("stages", "reward")} - allowed.get(module, set())
            assert not reached, f"{module} imports {sorted(reached)}"
