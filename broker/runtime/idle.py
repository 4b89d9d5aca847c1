"""``kela-broker run --until-idle``: the daemon stops by itself once it has nothing to do.

For scripted runs (a catch-up after an outage, an operator's one-off, the tests): start,
take in what waits in the inboxes, release what is due, then stop cleanly. Idle means,
three looks in a row: nothing queued, armed (a file settling) or being handled, no
complete file waiting in an inbox, no push running, and nothing due now (held items and
deliveries waiting for a retry are due later, like any schedule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from broker.storage.files import is_hidden_or_partial

LOOKS = 3  # idle this many looks in a row (a watcher event may be on its way)
EVERY = 0.2  # seconds between looks


@dataclass(frozen=True)
class Activity:
    """What the daemon is doing at one look."""

    queued: int
    armed: int
    handling: int
    pushing: bool
    waiting_files: int
    next_due: datetime | None


def is_idle(a: Activity, now: datetime) -> bool:
    """Nothing to do now (pure: the rule, apart from how it is looked at)."""
    return (a.queued == 0 and a.armed == 0 and a.handling == 0 and not a.pushing
            and a.waiting_files == 0 and (a.next_due is None or a.next_due > now))


def waiting_files(inboxes: list[Path]) -> int:
    """Complete files waiting in the inboxes (temporary uploads do not count)."""
    n = 0
    for folder in inboxes:
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            continue
        n += sum(1 for p in entries if p.is_file() and not is_hidden_or_partial(p.name))
    return n


async def stop_when_idle(look: Callable[[], Activity], now: Callable[[], datetime],
                         stop: Callable[[], None]) -> None:
    """Call ``stop`` after :data:`LOOKS` idle looks in a row."""
    quiet = 0
    while True:
        await asyncio.sleep(EVERY)
        activity = await asyncio.to_thread(look)  # reads the store: off the loop
        quiet = quiet + 1 if is_idle(activity, now()) else 0
        if quiet >= LOOKS:
            stop()
            return
