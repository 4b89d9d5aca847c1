"""Run every benchmark module and print one table.

Each module in BENCHMARKS exposes ``run(workdir: Path) -> list[Row]``; append yours.
Name modules on the command line to run only those. A module that raises shows
as a FAIL row; the others still report.
Generated inputs go under bench/out/ (git-ignored) and are reused between runs.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import Row

BENCHMARKS: list[str] = [
    "bench.validate_bench",
    "bench.daemon_bench",
    "bench.sftp_bench",
    "bench.audit_writer_bench",
]


def main() -> int:
    workdir = Path(__file__).resolve().parent / "out"
    workdir.mkdir(exist_ok=True)
    rows: list[Row] = []
    only = set(sys.argv[1:])  # `python -m bench bench.validate_bench` runs just that one
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(name)
            rows.extend(module.run(workdir))
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            rows.append(Row(name, f"error: {type(exc).__name__}: {exc}", ok=False))
    table = Table(title="kela-file-broker benchmarks")
    for column in ("benchmark", "ours", "baseline", "ratio", "target", "verdict"):
        table.add_column(column, justify="right" if column == "ratio" else "left")
    for r in rows:
        verdict = "" if r.ok is None else ("[green]PASS[/]" if r.ok else "[red]FAIL[/]")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.benchmark, r.ours, r.baseline, ratio, r.target, verdict)
    # Piped output (CI logs, files) gets the full width instead of wrapped cells.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
