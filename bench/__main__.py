"""Run every benchmark module and print one table.

Each module in BENCHMARKS exposes ``run(workdir: Path) -> list[Row]``; append yours.
Generated inputs go under bench/out/ (git-ignored) and are reused between runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import Row

BENCHMARKS: list[str] = [
    "bench.validate_bench",
]


def main() -> int:
    workdir = Path(__file__).resolve().parent / "out"
    workdir.mkdir(exist_ok=True)
    rows: list[Row] = []
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        rows.extend(module.run(workdir))
    table = Table(title="kela-file-broker benchmarks")
    for column in ("benchmark", "ours", "baseline", "ratio", "target", "verdict"):
        table.add_column(column, justify="right" if column == "ratio" else "left")
    for r in rows:
        verdict = "" if r.ok is None else ("[green]PASS[/]" if r.ok else "[red]FAIL[/]")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.benchmark, r.ours, r.baseline, ratio, r.target, verdict)
    Console().print(table)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
