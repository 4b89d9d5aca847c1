"""The functional core stays free of the edges (DEVELOPERS.md: core never imports adapters)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Only the composition roots wire the core to its adapters.
ROOTS = {"broker/daemon.py"}
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
