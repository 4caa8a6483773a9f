"""The package's layering, read from the import graph (``ast``; imports inside functions
count too, those under ``if TYPE_CHECKING:`` do not: they never run): ``cli -> report ->
{distill, retrieval} -> evaluate -> {aggregate, featurize} -> store -> data -> core``, every
arrow pointing down, and no import circle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import cellbag

SRC = Path(cellbag.__file__).resolve().parent
# the floor holds the package root (its version) and the error base next to core/
LEVELS = {
    "core": 0,
    "data": 1,
    "store": 2,
    "aggregate": 3,
    "featurize": 3,
    "evaluate": 4,
    "distill": 5,
    "retrieval": 5,
    "report": 6,
    "cli": 7,
    "__main__": 8,
}
FLOOR = {"cellbag", "cellbag.errors"}
# No circle is allowed (the store's importer builds Stores; Store itself imports no importer).
ALLOWED_CIRCLES: list[list[str]] = []


def modules(root: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = ["cellbag", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the cellbag modules it imports (at the top or inside functions)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("cellbag")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] != "cellbag":
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.add(resolve(full) if full in mods else resolve(base))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def stage(module: str) -> str:
    return "core" if module in FLOOR else module.split(".")[1]


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports from one stage into another that is not strictly below it."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = stage(src), stage(dst)
            if a != b and LEVELS[b] >= LEVELS[a]:
                bad.append(f"{src} -> {dst}")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_level():
    stages = {stage(m) for m in modules()}
    assert stages <= set(LEVELS), stages - set(LEVELS)


def test_graph_sees_top_level_and_lazy_imports():
    graph = import_graph(modules())
    assert "cellbag.store" in graph["cellbag.featurize.pipeline"]  # top-level import
    assert "cellbag.featurize.adapters" in graph["cellbag.featurize.registry"]  # in a function


def test_arrows_point_down():
    assert upward_arrows(import_graph(modules())) == []


def test_no_import_circle():
    assert [c for c in circles(import_graph(modules())) if c not in ALLOWED_CIRCLES] == []


def test_core_imports_no_stage():
    graph = import_graph(modules())
    core = {m: t for m, t in graph.items() if stage(m) == "core"}
    assert core and all(stage(t) == "core" for ts in core.values() for t in ts), core


def test_checks_catch_a_bad_graph(tmp_path):
    pkg = tmp_path / "cellbag"
    for rel, text in {
        "__init__.py": "",
        "store/__init__.py": "",
        "store/a.py": "def f():\n    from cellbag.retrieval import b\n",
        "retrieval/__init__.py": "",
        "retrieval/b.py": "from cellbag.store import a\nfrom . import c\n",
        "retrieval/c.py": "from .b import x\n",
        "retrieval/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import cellbag.report\n",
        "report/__init__.py": "",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(modules(pkg))
    assert upward_arrows(graph) == ["cellbag.store.a -> cellbag.retrieval.b"]
    assert circles(graph) == [["cellbag.retrieval.b", "cellbag.retrieval.c", "cellbag.store.a"]]


# A package's lazy exports (``_EXPORTS = {name: module}``) are arrows too.


def lazy_arrows(mods: dict[str, Path]) -> set[str]:
    """``package -> module`` for every entry of a package's ``_EXPORTS`` dict."""
    out = set()
    for name, path in mods.items():
        if path.name != "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                for v in node.value.values:
                    if isinstance(v, ast.Constant) and isinstance(v.value, str):
                        out.add(f"{name} -> {v.value}")
    return out


def test_lazy_exports_point_down():
    bad = set()
    for arrow in lazy_arrows(modules()):
        src, dst = arrow.split(" -> ")
        if stage(src) != stage(dst) and LEVELS[stage(dst)] >= LEVELS[stage(src)]:
            bad.add(arrow)
    assert bad == set()
