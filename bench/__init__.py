"""Benchmarks: ``python -m bench`` (``make bench``). Speed is measured here, not in tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table. ``ratio`` is ours/baseline (lower is better)."""

    benchmark: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None  # None: informational, no target
