"""The functional core stays free of the edges (DEVELOPERS.md: core never imports adapters)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Only the composition roots wire the core to its adapters.
ROOTS = {"broker/runtime/daemon.py"}
EDGES = ("adapters", "asyncssh", "paramiko", "watchdog", "socket", "http.server")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_core_modules_do_not_import_network_or_adapters() -> None:
    offenders = {}
    for path in sorted((REPO / "broker").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ROOTS or rel.startswith("broker/cli/"):
            continue
        bad = {m for m in imported_modules(path)
               if any(m == e or m.startswith(e + ".") for e in EDGES)}
        if bad:
            offenders[rel] = sorted(bad)
    assert offenders == {}


def test_no_import_cycles_not_even_through_function_local_imports() -> None:
    """Imports go one way: a cycle hidden behind an import inside a function (to dodge
    the error at import time) is still a cycle. Type-only imports do not count."""
    import grimp

    graph = grimp.build_graph("broker", "adapters", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph.find_modules_directly_imported_by(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    assert cycles == []
