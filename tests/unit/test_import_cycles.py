"""No import cycles inside ssh_ipykernel: every module can be imported on its own, first.

The graph is read from the source with ast: ``from .x import y``, ``from . import x``,
``from ..x import y``, ``import ssh_ipykernel.x`` and ``from ssh_ipykernel.x import y``.
Imports inside functions (the lazy ones that keep the proxy small) count too: a cycle through a
lazy import still means two modules that each need the other. Only imports under
``if TYPE_CHECKING:`` are left out, as they never run.

Importing ``a.b.c`` first runs the package ``a.b``'s ``__init__``, so an import of a module also
counts as an import of its packages -- except the importer's own packages, which Python has
already started when the importer runs.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import ssh_ipykernel

PACKAGE = "ssh_ipykernel"
ROOT = Path(ssh_ipykernel.__file__).parent


def module_files() -> Dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.stmt]:
    """Import statements in ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:
            yield from _imports(child)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _imports(child)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> Optional[str]:
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports (directly, or as the packages of those)."""
    files = module_files()
    graph: Dict[str, Set[str]] = {name: set() for name in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: Set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _absolute(module, is_package, node)
            if base is None:
                continue
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in files and name != module and name not in own_packages:
                    graph[module].add(name)
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (as a path that ends where it starts) per strongly connected group of modules."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(group)) for group in groups]


def _cycle_in(graph: Dict[str, Set[str]], group: Set[str]) -> List[str]:
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = min(n for n in graph[path[-1]] if n in group)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_relative_absolute_and_lazy_imports() -> None:
    graph = import_graph()
    assert "ssh_ipykernel.manage" in graph["ssh_ipykernel.cli"]  # from .manage import ... (top level)
    assert "ssh_ipykernel.proxy" in graph["ssh_ipykernel.proxycli"]  # inside the command: lazy
    assert "ssh_ipykernel.transport" in graph["ssh_ipykernel.proxy"]  # from .transport import ...
    assert "ssh_ipykernel.hosts" in graph["ssh_ipykernel.transport.base"]  # from ..hosts import ...
    assert "ssh_ipykernel.remote.protocol" in graph["ssh_ipykernel.remote.keeper"]  # from .protocol import ...
    # importing transport.openssh runs the package ssh_ipykernel.transport first
    assert "ssh_ipykernel.transport" in graph["ssh_ipykernel.cli"]


def test_a_cycle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
