"""When a file dropped into an inbox may be taken: only once it has stopped changing.

SPEC 1 asks writers to use a temporary name and rename, but a producer that writes in
place must not lose data: a file is taken only when its size, mtime and inode have not
changed for ``settle_seconds`` as this process has seen it, on its own monotonic clock.
The file's mtime is not enough on its own: a network mount's clock may lag ours, and a
file being written would then look old. The daemon adds what only the operating system
knows (is it open for writing?) and checks the file once more right before the ingest
commits.

Pure: the caller passes the clock; nothing here touches the file system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Observation:
    """What a stat of the file said: enough to tell that it changed."""

    size: int
    mtime_ns: int
    ino: int


@dataclass
class SettleGate:
    settle_seconds: float
    _seen: dict[Path, tuple[Observation, float]] = field(default_factory=dict)

    def wait_time(self, path: Path, obs: Observation, *, monotonic: float) -> float:
        """0.0 when the file may be taken now, else how many seconds to wait first."""
        first = self._seen.get(path)
        if first is None or first[0] != obs:
            self._seen[path] = first = (obs, monotonic)
        stable = monotonic - first[1]
        # A nanosecond of tolerance: the clocks are floats, and a file stable for exactly
        # the settle time must not wait for a rounding error.
        short = self.settle_seconds - stable
        return 0.0 if short <= 1e-9 else short

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)
