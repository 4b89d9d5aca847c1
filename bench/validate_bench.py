"""`kela-broker validate` against `xmllint --stream --schema` on the same big batches.

Both run as real subprocesses on the same file in the same run; time is wall clock
(best of 3 at 100 MB, one run at 1 GB); peak RSS is the most each command's whole
process tree held (ours reads big files with worker processes: see ``_timed``).
BENCH_VALIDATE_MB=100 limits the sizes (comma-separated). Targets: within 3x of xmllint's time,
and under 300 MB peak RSS at 1 GB.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

from bench import Row
from broker.intake.synthetic import write_batch_of_size

REPO = Path(__file__).resolve().parents[1]
XSD = REPO / "schemas" / "decision-batch-2.xsd"
SIZES_MB = tuple(int(x) for x in os.environ.get("BENCH_VALIDATE_MB", "100,1000").split(","))
RSS_LIMIT_MB = 300
MAX_RATIO = 3.0
DECISION_DATE = date(2026, 11, 20)


def _municipalities() -> list[str]:
    with (REPO / "broker" / "data" / "municipalities.csv").open(encoding="utf-8") as f:
        return sorted(row["code"] for row in csv.DictReader(f))


def _batch(workdir: Path, mb: int) -> Path:
    path = workdir / f"batch-{mb}mb.xml"
    if not path.exists():
        tmp = path.with_suffix(".part")
        write_batch_of_size(
            tmp, mb, municipalities=_municipalities(), decision_date=DECISION_DATE,
            batch_id=f"BENCH-{mb}MB",
        )
        tmp.rename(path)
    return path


def _tree_rss_kb(root: int) -> int:
    """Resident memory of ``root`` and all its descendants now (Linux /proc), in KiB.

    Shared pages (libraries) count once per process: an upper bound, on purpose.
    """
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * page_kb
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, parent in parents.items() if parent == pid and p not in tree)
    return sum(rss.get(p, 0) for p in tree)


def _timed(cmd: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit code) of one child process (output discarded).

    Peak RSS is the larger of the child's own peak (wait4) and the most its whole
    process tree held at once, sampled every 50 ms: a command that starts worker
    processes is charged for all of them together.
    """
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kb = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kb
        while not done.wait(0.05):
            peak_kb = max(peak_kb, _tree_rss_kb(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen
    elapsed = time.perf_counter() - start
    return elapsed, max(usage.ru_maxrss, peak_kb) / 1024, os.waitstatus_to_exitcode(status)


def _best(cmd: list[str], runs: int) -> tuple[float, float, int]:
    """Fastest of ``runs`` (the least disturbed by other load), highest RSS, last exit code."""
    results = [_timed(cmd) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results), results[-1][2]


def _broker_exe() -> str:
    exe = Path(sys.executable).parent / "kela-broker"
    return str(exe if exe.exists() else REPO / ".venv" / "bin" / "kela-broker")


def run(workdir: Path) -> list[Row]:
    xmllint = shutil.which("xmllint")
    rows: list[Row] = []
    for mb in SIZES_MB:
        path = _batch(workdir, mb)
        size_mb = path.stat().st_size / 1e6
        runs = 3 if mb <= 100 else 1
        ours_s, ours_rss, ours_rc = _best([_broker_exe(), "validate", str(path)], runs)
        name = f"validate {mb} MB batch"
        ours = f"{ours_s:.1f} s, {size_mb / ours_s:.0f} MB/s, {ours_rss:.0f} MB RSS"
        if ours_rc != 0:
            rows.append(Row(name, f"exit {ours_rc} (file should be valid)", ok=False))
            continue
        if xmllint is None:
            rows.append(Row(name, ours, "xmllint not installed", target=f"<= {MAX_RATIO}x"))
        else:
            base_s, base_rss, base_rc = _best(
                [xmllint, "--stream", "--noout", "--schema", str(XSD), str(path)], runs
            )
            base = f"{base_s:.1f} s, {size_mb / base_s:.0f} MB/s, {base_rss:.0f} MB RSS"
            if base_rc != 0:
                base += f" (exit {base_rc})"
            ratio = ours_s / base_s
            rows.append(Row(name, ours, base, ratio, f"<= {MAX_RATIO:.0f}x xmllint time",
                            ratio <= MAX_RATIO))
        if mb >= 1000:
            rows.append(Row(f"peak RSS, {mb} MB batch", f"{ours_rss:.0f} MB", "", None,
                            f"< {RSS_LIMIT_MB} MB", ours_rss < RSS_LIMIT_MB))
    return rows
