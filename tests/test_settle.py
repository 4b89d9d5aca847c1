"""When a dropped file has settled (broker.settle): pure, both clocks passed in."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.settle import Observation, SettleGate

P = Path("/inbox/kela/b.xml")


def test_a_fresh_file_waits_for_the_settle_time() -> None:
    gate = SettleGate(0.5)
    obs = Observation(100, mtime_ns=int(1000.0e9), ino=7)
    assert gate.wait_time(P, obs, monotonic=10.0, wall=1000.1) == pytest.approx(0.4)
    assert gate.wait_time(P, obs, monotonic=10.3, wall=1000.4) == pytest.approx(0.1)
    assert gate.wait_time(P, obs, monotonic=10.6, wall=1000.7) == 0.0


def test_a_change_starts_the_wait_again() -> None:
    gate = SettleGate(0.5)
    first = Observation(100, mtime_ns=int(1000.0e9), ino=7)
    assert gate.wait_time(P, first, monotonic=10.0, wall=1000.2) > 0
    grown = Observation(200, mtime_ns=int(1000.45e9), ino=7)
    assert gate.wait_time(P, grown, monotonic=10.46, wall=1000.46) == pytest.approx(0.49)


def test_an_old_file_is_taken_at_once_even_if_just_seen() -> None:
    gate = SettleGate(2.0)
    obs = Observation(100, mtime_ns=int(900.0e9), ino=7)
    assert gate.wait_time(P, obs, monotonic=5.0, wall=1000.0) == 0.0


def test_a_clock_ahead_on_the_mount_is_covered_by_our_own_clock() -> None:
    gate = SettleGate(1.0)
    obs = Observation(100, mtime_ns=int(2000.0e9), ino=7)  # mtime in our future
    assert gate.wait_time(P, obs, monotonic=0.0, wall=1000.0) == 1.0
    assert gate.wait_time(P, obs, monotonic=1.0, wall=1001.0) == 0.0


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), min_size=1, max_size=30),
       st.integers(100, 3000))
def test_never_ready_unless_unchanged_for_the_settle_time(
        steps: list[tuple[int, int]], settle_ms: int) -> None:
    """Whatever sequence of changes and waits (in milliseconds), the gate opens only once
    the file has not changed for ``settle`` seconds."""
    gate = SettleGate(settle_ms / 1000)
    now_ms, changed_ms, size = 0, 0, -1
    for new_size, dt in steps:
        now_ms += dt
        if new_size != size:
            size, changed_ms = new_size, now_ms
        obs = Observation(size, mtime_ns=changed_ms * 1_000_000, ino=1)
        wait = gate.wait_time(P, obs, monotonic=now_ms / 1000, wall=now_ms / 1000)
        assert (wait == 0.0) == (now_ms - changed_ms >= settle_ms)
