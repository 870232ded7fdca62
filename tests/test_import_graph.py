"""moesif_otel's modules import one another without a circle, and each imports on its own.

The graph is read from the source (``ast``): every ``import``/``from`` of a moesif_otel module,
at module level or inside a function (a function-level import is still an edge: it only moves
where the circle bites). Imports under ``if TYPE_CHECKING:`` are left out: they never run, and
a type checker resolves circular annotations itself. Importing a submodule loads its parent
package first; that implicit edge is not counted, but taking a name the package itself defines
(``from moesif_otel import MoesifMiddleware``) is an edge to the package.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import moesif_otel

PACKAGE = moesif_otel.__name__


def _modules() -> dict[str, Path]:
    """Every module of the package (subpackages included), by name, with its source file."""
    found = {PACKAGE: Path(moesif_otel.__file__)}
    for info in pkgutil.walk_packages(moesif_otel.__path__, f"{PACKAGE}."):
        spec = info.module_finder.find_spec(info.name, None)
        assert spec is not None and spec.origin is not None, info.name
        found[info.name] = Path(spec.origin)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The moesif_otel modules ``module`` imports, wherever in the file it does."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()

    def add(name: str) -> None:
        # the deepest module the name points at (``from a.b import c``: a.b.c when c is a module)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(f"{PACKAGE}."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == PACKAGE or source.startswith(f"{PACKAGE}."):
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    add(submodule if submodule in modules else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[tuple[set[str], list[str]]]:
    """Each group of modules that reach one another (Tarjan's strongly connected components),
    with one circle through it as a path a → … → a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [(group, _path_within(group, graph)) for group in groups]


def _path_within(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the group's first module, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no circle in {sorted(group)}")


def test_modules_found() -> None:
    modules = _modules()
    for name in ("moesif_otel.capture", "moesif_otel.governance", "moesif_otel.collector.server"):
        assert name in modules


def test_imports_read_from_the_source(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import moesif_otel.a\n"
        "from moesif_otel import b, NAME\n"
        "from .c import x\n"
        "if TYPE_CHECKING:\n    from moesif_otel.d import T\n"
        "def f():\n    from moesif_otel.e import y\n"
    )
    names = ["a", "b", "d", "e", "pkg", "pkg.c", "pkg.m"]
    modules = {PACKAGE: source, **{f"{PACKAGE}.{n}": source for n in names}}
    assert _imported("moesif_otel.pkg.m", source, modules) == {
        "moesif_otel.a",
        "moesif_otel.b",
        "moesif_otel",  # NAME is the package's own
        "moesif_otel.pkg.c",
        "moesif_otel.e",  # function-level
    }


def test_cycle_finder_reports_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [({"a", "b", "c"}, ["a", "b", "c", "a"])]


def test_import_graph_has_no_cycle() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    circles = [
        f"{' -> '.join(path)}  (the group: {', '.join(sorted(group))})" for group, path in _cycles(graph)
    ]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_each_module_imports_on_its_own() -> None:
    """In a fresh interpreter, the package first, then each submodule imported with none of its
    siblings loaded: every moesif_otel submodule (and the package's attribute naming it) is
    dropped before the next import, so each one loads its own imports in its own order. The
    package itself stays (a submodule cannot load without it), as do third-party modules (fast)."""
    names = sorted(_modules())
    script = f"""
import importlib, sys, traceback
package = importlib.import_module({PACKAGE!r})
failed = []
for name in {names[1:]!r}:
    for loaded in [m for m in sys.modules if m.startswith({PACKAGE + "."!r})]:
        module = sys.modules.pop(loaded)
        parent, _, attr = loaded.rpartition(".")
        if getattr(sys.modules.get(parent), attr, None) is module:
            delattr(sys.modules[parent], attr)
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name + ":\\n" + traceback.format_exc())
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    assert names[0] == PACKAGE
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
