"""When things are released: per-type timing (SPEC 2) and the staggered first delivery (SPEC 4).

Pure functions only: no clock, no storage. ``now`` is always a parameter, every
datetime taken must be timezone-aware, and every datetime returned is UTC. The
store keeps the planned release time and portion of each notification, so a plan
survives restarts and nothing here holds state.

Local wall-clock times (06:00 Europe/Helsinki) are turned into instants one local
*date* at a time, never by adding hours to an instant: that is what keeps a
daylight-saving change from shifting a release by an hour or producing it twice.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.errors import ConfigError

Timing = Literal["immediate", "next_day"]

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_TIMING_RE = re.compile(r"(?P<kind>immediate|next-day)(?:\s+(?P<hh>\d{1,2}):(?P<mm>\d{2}))?")


class ScheduleError(ConfigError, ValueError):
    """A release timing or stagger policy in the configuration is unusable.

    Also a ValueError, so a config loader can treat it like any other bad value
    and add the file and key it came from.
    """


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or a ScheduleError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Helsinki'"
        ) from exc


def _utc(value: datetime, what: str) -> datetime:
    # A naive datetime is a bug in the caller (its zone is a guess); refuse it loudly.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """``at`` on local date ``day`` in ``tz``, as UTC.

    Exactly one instant per local date: an ambiguous wall time (the repeated hour
    in autumn) takes its first occurrence (fold=0); a wall time that does not exist
    (the skipped hour in spring) maps to the same instant one hour later on the
    wall clock. 06:00 in Europe/Helsinki is neither, but configured times may be.
    """
    return datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=tz).astimezone(UTC)


# --- per-type release timing (SPEC 2) -------------------------------------------------


@dataclass(frozen=True)
class TypeTiming:
    """How a notification type is released: at once, or at a local time the day after."""

    kind: Timing
    at: time = time(6, 0)  # local time, used by next_day only

    def __post_init__(self) -> None:
        if self.kind not in ("immediate", "next_day"):
            raise ScheduleError(f"unknown release timing kind {self.kind!r}")

    @classmethod
    def parse(cls, text: str) -> TypeTiming:
        """Read ``"immediate"`` or ``"next-day HH:MM"`` (``"next-day"`` alone means 06:00)."""
        m = _TIMING_RE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if m is None:
            raise ScheduleError(
                f"release timing {text!r} not understood; "
                "write 'immediate' or 'next-day HH:MM' (for example 'next-day 06:00')"
            )
        if m["kind"] == "immediate":
            if m["hh"] is not None:
                raise ScheduleError(
                    f"release timing {text!r}: 'immediate' takes no time of day"
                )
            return cls("immediate")
        if m["hh"] is None:
            return cls("next_day")
        hh, mm = int(m["hh"]), int(m["mm"])
        if hh > 23 or mm > 59:
            raise ScheduleError(
                f"release timing {text!r}: {m['hh']}:{m['mm']} is not a time of day "
                "(use 00:00 to 23:59)"
            )
        return cls("next_day", time(hh, mm))

    def __str__(self) -> str:
        # Round-trips through parse(); used when showing the configuration.
        return "immediate" if self.kind == "immediate" else f"next-day {self.at:%H:%M}"


def release_time(
    timing: TypeTiming, *, decision_date: date, urgent: bool, received: datetime, tz: str
) -> datetime:
    """The normal release time of one notification, in UTC.

    Immediate types and urgent notifications are released when received; next-day
    types at ``timing.at`` local time on the day after the decision date. A time
    already past is returned as is: the next release pass treats it as due now.
    """
    received_utc = _utc(received, "received")
    if urgent or timing.kind == "immediate":
        return received_utc
    return local_instant(decision_date + timedelta(days=1), timing.at, zone(tz))


def due(release_at: datetime | None, now: datetime) -> bool:
    """True when something with this release time goes out at a pass at ``now``.

    ``None`` means no release time is set (nothing scheduled): never due.
    """
    now_utc = _utc(now, "now")
    return release_at is not None and _utc(release_at, "release_at") <= now_utc


# --- staggered first delivery (SPEC 4) -----------------------------------------------


@dataclass(frozen=True)
class StaggerPolicy:
    """A first delivery above ``threshold`` goes out ``portion`` at a time, weekly."""

    threshold: int = 400
    portion: int = 300
    weekday: int = 0  # Monday = 0, as datetime.weekday()
    at: time = time(6, 0)
    timezone: str = "Europe/Helsinki"

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise ScheduleError(f"stagger threshold must be a whole number, got {self.threshold!r}")
        if self.threshold < 0:
            raise ScheduleError(f"stagger threshold must be 0 or more, got {self.threshold}")
        if isinstance(self.portion, bool) or not isinstance(self.portion, int) or self.portion < 1:
            raise ScheduleError(
                f"stagger portion must be a whole number >= 1, got {self.portion!r}"
            )
        if isinstance(self.weekday, bool) or self.weekday not in range(7):
            raise ScheduleError(
                f"stagger weekday must be 0 (Monday) to 6 (Sunday), got {self.weekday!r}"
            )
        if not isinstance(self.at, time):
            raise ScheduleError(f"stagger time must be a time of day, got {self.at!r}")
        zone(self.timezone)

    @property
    def tzinfo(self) -> ZoneInfo:
        return zone(self.timezone)

    def describe(self) -> str:
        return (
            f"more than {self.threshold}: {self.portion} at once, then {self.portion} "
            f"each {_WEEKDAYS[self.weekday]} {self.at:%H:%M} {self.timezone}"
        )


def _on_weekday(day: date, policy: StaggerPolicy) -> date:
    """The first local date on or after ``day`` that falls on the policy weekday."""
    return day + timedelta(days=(policy.weekday - day.weekday()) % 7)


def _weekly(first: date, policy: StaggerPolicy, n: int) -> list[datetime]:
    # Step local dates, not instants: each slot is its own wall-clock time, so a DST
    # change between two slots neither shifts the later one nor yields it twice.
    tz = policy.tzinfo
    return [local_instant(first + timedelta(weeks=k), policy.at, tz) for k in range(n)]


def portion_times(now: datetime, policy: StaggerPolicy, n: int) -> list[datetime]:
    """Release times of ``n`` portions of a plan formed at ``now``, in UTC.

    Portion 0 is released at ``now`` ("the first portion at once"). Portion 1 is the
    first slot on a *later local date* than ``now``, then weekly. So a plan formed on
    a Monday goes out that day and next Monday, whether it is formed at 05:00 or at
    07:00: an operator reads the SPEC's "at once, then each Monday" as "today, then
    the coming Monday", never as a second portion an hour after the first. A plan
    formed on a Sunday has its second portion the next day, which is the coming
    Monday the SPEC names.
    """
    now_utc = _utc(now, "now")
    if n <= 0:
        return []
    tomorrow = now_utc.astimezone(policy.tzinfo).date() + timedelta(days=1)
    return [now_utc, *_weekly(_on_weekday(tomorrow, policy), policy, n - 1)]


class Candidate(NamedTuple):
    """A notification that would be part of a first delivery.

    This and the other per-item values below are NamedTuples, immutable like frozen
    dataclasses but several times cheaper to make: a release after a big batch makes
    one per held notification (100,000)."""

    id: str
    decision_date: date
    seq: int  # arrival order in the store


class PlannedRelease(NamedTuple):
    id: str
    portion: int
    release_at: datetime  # UTC


def oldest_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Decision date, then arrival order; the id only makes the order total."""
    return sorted(candidates, key=lambda c: (c.decision_date, c.seq, c.id))


def plan_first_delivery(
    candidates: Sequence[Candidate], policy: StaggerPolicy, now: datetime
) -> list[PlannedRelease] | None:
    """The stagger plan for a first delivery, or None when it needs none.

    None when there are at most ``policy.threshold`` candidates: they are released
    now, normally. Otherwise every candidate gets exactly one portion, oldest first,
    ``policy.portion`` per portion (the last may be smaller), with the release times
    of :func:`portion_times`. The list is in release order.
    """
    now_utc = _utc(now, "now")
    if len(candidates) <= policy.threshold:
        return None
    repeated = [cid for cid, k in Counter(c.id for c in candidates).items() if k > 1]
    if repeated:
        raise ValueError(f"candidate ids must be unique; repeated: {', '.join(repeated[:5])}")
    ordered = oldest_first(candidates)
    count = -(-len(ordered) // policy.portion)
    times = portion_times(now_utc, policy, count)
    return [
        PlannedRelease(c.id, i // policy.portion, times[i // policy.portion])
        for i, c in enumerate(ordered)
    ]


def effective_release(normal: datetime, planned: datetime | None) -> datetime:
    """A stagger plan overrides the normal time; everything else keeps its normal timing."""
    return _utc(planned if planned is not None else normal, "release time")


# --- what a release pass writes ------------------------------------------------------


class HeldItem(NamedTuple):
    """A held assignment as storage returns it: plain values, no database in sight."""

    id: int
    organisation: str
    type: str
    kind: str  # "notification" | "list"
    release_at: datetime  # its normal time (SPEC 2)
    planned_at: datetime | None  # its stagger portion's time (SPEC 4), if a plan holds it
    portion: int | None
    seq: int  # arrival order


@dataclass(frozen=True)
class DueGroup:
    """One delivery file a pass writes: a list alone (SPEC 2: one file each), or the
    notifications of one (organisation, type, portion)."""

    organisation: str
    type: str
    kind: str
    portion: int | None
    ids: tuple[int, ...]


def due_groups(items: Iterable[HeldItem], now: datetime) -> list[DueGroup]:
    """Which held items a release pass at ``now`` writes, grouped into delivery files.

    An item is due when its effective time (a stagger portion's time overrides the
    normal one) has come. After downtime over two Mondays both portions are due, each
    its own file. Notifications keep arrival order within a file; groups come out by
    organisation, type and portion. Same input, same answer.
    """
    lists: list[DueGroup] = []
    groups: dict[tuple[str, str, int | None], list[HeldItem]] = {}
    for item in items:
        if not due(effective_release(item.release_at, item.planned_at), now):
            continue
        if item.kind == "list":
            lists.append(DueGroup(item.organisation, item.type, "list", None, (item.id,)))
        else:
            groups.setdefault((item.organisation, item.type, item.portion), []).append(item)
    out = sorted(lists, key=lambda g: (g.organisation, g.type, g.ids))
    for (org, type_, portion), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -1 if kv[0][2] is None
                                            else kv[0][2])):
        ordered = sorted(members, key=lambda m: m.seq)
        out.append(DueGroup(org, type_, "notification", portion, tuple(m.id for m in ordered)))
    return out
