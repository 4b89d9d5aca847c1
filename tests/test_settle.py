"""The settle gate: a dropped file is taken only once it has stopped changing, as this
process has seen it on its own clock (a mount's clock, and so the mtime, may lag)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.domain.settle import Observation, SettleGate

P = Path("/inbox/kela/b.xml")


def test_a_fresh_file_waits_for_the_settle_time() -> None:
    gate = SettleGate(0.5)
    obs = Observation(100, mtime_ns=int(1000.0e9), ino=7)
    assert gate.wait_time(P, obs, monotonic=10.0) == pytest.approx(0.5)
    assert gate.wait_time(P, obs, monotonic=10.3) == pytest.approx(0.2)
    assert gate.wait_time(P, obs, monotonic=10.6) == 0.0


def test_a_change_starts_the_wait_again() -> None:
    gate = SettleGate(0.5)
    first = Observation(100, mtime_ns=int(1000.0e9), ino=7)
    assert gate.wait_time(P, first, monotonic=10.0) > 0
    grown = Observation(200, mtime_ns=int(1000.45e9), ino=7)
    assert gate.wait_time(P, grown, monotonic=10.46) == pytest.approx(0.5)
    replaced = Observation(200, mtime_ns=int(1000.45e9), ino=8)  # same size, other file
    assert gate.wait_time(P, replaced, monotonic=10.97) == pytest.approx(0.5)


def test_an_old_mtime_is_not_enough_our_own_observation_counts() -> None:
    """A file being written on a mount whose clock lags ours looks old by its mtime."""
    gate = SettleGate(2.0)
    obs = Observation(100, mtime_ns=int(900.0e9), ino=7)
    assert gate.wait_time(P, obs, monotonic=5.0) == 2.0
    assert gate.wait_time(P, obs, monotonic=7.0) == 0.0


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), min_size=1, max_size=30),
       st.integers(100, 3000))
def test_never_ready_unless_unchanged_for_the_settle_time(
        steps: list[tuple[int, int]], settle_ms: int) -> None:
    """Whatever sequence of changes and waits (in milliseconds), the gate opens only once
    the file has not changed for ``settle`` seconds as the gate has seen it."""
    gate = SettleGate(settle_ms / 1000)
    now_ms, changed_ms, size = 0, 0, -1
    for new_size, dt in steps:
        now_ms += dt
        if new_size != size:
            size, changed_ms = new_size, now_ms
        obs = Observation(size, mtime_ns=0, ino=1)  # any mtime: it is not trusted
        wait = gate.wait_time(P, obs, monotonic=now_ms / 1000)
        assert (wait == 0.0) == (now_ms - changed_ms >= settle_ms)
