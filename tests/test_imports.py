"""The import structure of ``demhec``: no module imports itself back through others, and no
module reaches for another module's private names.

A cycle makes the import order matter (one module sees the other half-initialised) and pushes
imports into functions to dodge it; a private name imported across modules ties one module to
the internals of another, which that one may change freely. The modules are read with ``ast``,
not imported, so this runs in a fraction of a second and sees imports inside functions too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "demhec"

# A module whose name is private but whose names are the package's shared public helpers.
SHARED = "demhec._common"

# Imports that close a cycle or take a private name, each as (importer, imported module or
# module.name); the test ignores exactly these, so it fails on any new one. Empty: keep it so.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


def _module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name; a package's ``__init__`` is the package."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = ("demhec", *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _imports(
    name: str, path: Path, modules: dict[str, Path] = MODULES
) -> Iterator[tuple[str, str | None]]:
    """(imported module, imported name or None) for each demhec import anywhere in the module,
    at the top level, inside functions or under ``TYPE_CHECKING``. A name that is a submodule
    (``from . import distributed``) counts as an import of that submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "demhec":
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] != "demhec":
                continue
            assert module in modules, f"{name} imports {module}, which is not a module of demhec"
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield (sub, None) if sub in modules else (module, alias.name)


def _graph(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """Module -> the other demhec modules it imports, less the edges allowed for now."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, _ in _imports(name, path, modules):
            if module != name and (name, module) not in ALLOWED_FOR_NOW:
                graph[name].add(module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected group of modules, by
    Tarjan's algorithm; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # Tarjan's groups always have one


def _is_private(dotted: str) -> bool:
    parts = dotted.split(".")
    return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts)


def test_the_walk_resolves_every_form_of_import(tmp_path):
    files = {
        "__init__.py": "from .sub import thing\n",
        "top.py": "import demhec.sub.deep\nfrom . import low\n",
        "low.py": "def f():\n    from .sub.deep import _hidden\n",
        "sub/__init__.py": "from .deep import thing\n",
        "sub/deep.py": "from .. import top\nfrom ..low import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = _module_names(tmp_path)
    assert _graph(modules) == {
        "demhec": {"demhec.sub"},  # a package's __init__ is the package
        "demhec.top": {"demhec.sub.deep", "demhec.low"},  # `from . import low` imports a module
        "demhec.low": {"demhec.sub.deep"},  # inside a function too
        "demhec.sub": {"demhec.sub.deep"},
        "demhec.sub.deep": {"demhec.top", "demhec.low"},
    }
    hidden = list(_imports("demhec.low", modules["demhec.low"], modules))
    assert hidden == [("demhec.sub.deep", "_hidden")]
    assert _cycles(_graph(modules)) == [["demhec.low", "demhec.sub.deep", "demhec.low"]]


def test_the_walk_sees_the_package():
    assert {"demhec", "demhec.training", "demhec.models", "demhec.experiments.tables"} <= set(MODULES)
    assert "demhec.distributed" in _graph()["demhec.training"]


def test_the_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles in demhec: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_from_another_module():
    found = []
    for name, path in MODULES.items():
        for module, imported in _imports(name, path):
            target = module if imported is None else f"{module}.{imported}"
            if module == name or (module == SHARED and imported is None):
                continue
            checked = target.removeprefix(SHARED) if module == SHARED else target
            if _is_private(checked) and (name, target) not in ALLOWED_FOR_NOW:
                found.append(f"{name} imports {target}")
    assert not found, "private names imported across modules: " + "; ".join(sorted(found))
